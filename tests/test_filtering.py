import json

import numpy as np
import pytest

from jal.cli import main
from jal.data import make_pool
from jal.data.mnist import load_idx_dir
from jal.errors import JalError
from jal.filtering import kept_indices

TRAIN = ["--epochs", "1", "--min-samples-per-epoch", "64", "--mc-samples", "4"]


def test_lowest_scores_are_removed_and_protected_samples_kept():
    scores = np.array([0.5, 0.1, 0.9, 0.05, 0.3, 0.7, 0.2, 0.0])
    # Candidates are all but 3 and 7 (protected); 50% of 6 removes the 3 lowest: 1, 6, 4.
    kept = kept_indices(scores, 0.5, protected=[3, 7])
    assert kept.tolist() == [0, 2, 3, 5, 7]
    assert kept_indices(scores, 0.0).tolist() == list(range(8))
    rng = np.random.default_rng(0)
    for _ in range(20):
        randomly = kept_indices(scores, 0.5, protected=[3, 7], rng=rng)
        assert len(randomly) == 5 and {3, 7} <= set(randomly.tolist())
    with pytest.raises(JalError, match="must be in"):
        kept_indices(scores, 1.0)


def test_filter_curve_end_to_end(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "filter"
    flags = ["--pool-size", "100", "--initial", "10", "--fractions", "0", "0.5", *TRAIN]
    assert main(["filter", "--data-dir", str(synthetic_dir), "--out", str(out), *flags]) == 0
    results = [json.loads(line) for line in (out / "filtering.jsonl").read_text().splitlines()]
    assert [(r["fraction"], r["removal"], r["num_kept"]) for r in results] == [
        (0.0, "lowest", 100),
        (0.5, "lowest", 55),
        (0.5, "random", 55),
    ]
    assert all(0 <= r["test_accuracy"] <= 1 and np.isfinite(r["test_nll"]) for r in results)
    assert np.load(out / "filter_scores.npy").shape == (100,)
    assert "| 50% | random | 55 |" in capsys.readouterr().out
    # A held-out scoring set lies outside the pool.
    held_out = tmp_path / "held_out"
    flags = ["--held-out", "30", "--pool-size", "100", "--fractions", "0.3", *TRAIN]
    assert main(["filter", "--data-dir", str(synthetic_dir), "--out", str(held_out), *flags]) == 0
    config = json.loads((held_out / "config.json").read_text())
    assert not set(config["record"]["scoring_set"]) & set(np.load(held_out / "pool_indices.npy").tolist())
    assert json.loads((held_out / "filtering.jsonl").read_text().splitlines()[0])["num_kept"] == 70


def test_active_learning_on_a_filtered_pool(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--pool-size", "100", "--initial", "10", "--acquire", "5", "--iterations", "2", *TRAIN]
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(out), "--filter-fraction", "0.5", *flags]) == 0
    config = json.loads((out / "config.json").read_text())
    pool = make_pool(len(load_idx_dir(synthetic_dir).x_train), 100)
    kept = np.load(out / "pool_indices.npy")
    record = config["record"]
    assert len(kept) == 55 == record["filtered_pool_size"] and set(kept.tolist()) <= set(pool.tolist())
    # The initial samples survive the filter, renumbered within the kept pool.
    initial = np.random.RandomState(42).permutation(100)[:10]
    assert sorted(kept[record["initial_indices"]].tolist()) == sorted(pool[initial].tolist())
    assert np.load(out / "pool_scores.npy").shape == (3, 55)
    assert np.load(out / "test_scores.npy").shape[1] == len(load_idx_dir(synthetic_dir).x_test)


def test_filtering_more_than_the_schedule_allows_is_an_error(synthetic_dir, tmp_path, capsys):
    flags = ["--pool-size", "100", "--initial", "10", "--acquire", "10", "--iterations", "6", *TRAIN]
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(out), "--filter-fraction", "0.5", *flags]) == 2
    assert "exceed the pool of 55" in capsys.readouterr().err and not out.exists()


def test_report_of_a_filter_directory(synthetic_dir, tmp_path):
    out = tmp_path / "filter"
    flags = ["--pool-size", "100", "--initial", "10", "--fractions", "0", "0.5", *TRAIN]
    assert main(["filter", "--data-dir", str(synthetic_dir), "--out", str(out), *flags]) == 0
    report = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(report)]) == 0
    page = report.read_text()
    assert '<table id="filtering-filter">' in page and page.count("<tr>") == 1 + 3
    assert page.count('<img alt="') == 3  # the filtering curve and the two illustrations
    assert main(["report", str(out), "--out", str(tmp_path / "report.txt")]) == 2
