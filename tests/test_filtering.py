import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_mnist, write_idx_dir

from jal import filtering
from jal.cli import main
from jal.data import make_pool
from jal.data.mnist import load_idx_dir
from jal.errors import JalError
from jal.filtering import FRACTIONS, kept_indices
from jal.loop import Data, LoopConfig
from jal.models import build_model
from jal.train import TrainConfig

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


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """One `jal filter` run on synthetic MNIST, shared by the tests that read it: its directory and its stdout."""
    root = tmp_path_factory.mktemp("filtering")
    data = write_idx_dir(root / "mnist", synthetic_mnist(600, 200))
    out = root / "filter"
    flags = ["--pool-size", "100", "--initial", "10", "--fractions", "0", "0.5", *TRAIN]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["filter", "--data-dir", str(data), "--out", str(out), *flags])
    assert code == 0
    return data, out, printed.getvalue()


@pytest.mark.slow
def test_filter_curve_end_to_end(filtered, tmp_path):
    synthetic_dir, out, printed = filtered
    results = [json.loads(line) for line in (out / "filtering.jsonl").read_text().splitlines()]
    assert [(r["fraction"], r["removal"], r["num_kept"]) for r in results] == [
        (0.0, "lowest", 100),
        (0.5, "lowest", 55),
        (0.5, "random", 55),
    ]
    assert all(0 <= r["test_accuracy"] <= 1 and np.isfinite(r["test_nll"]) for r in results)
    assert np.load(out / "filter_scores.npy").shape == (100,)
    assert "| 50% | random | 55 |" in printed
    # A held-out scoring set lies outside the pool.
    held_out = tmp_path / "held_out"
    flags = ["--held-out", "30", "--pool-size", "100", "--fractions", "0.3", *TRAIN]
    assert main(["filter", "--data-dir", str(synthetic_dir), "--out", str(held_out), *flags]) == 0
    config = json.loads((held_out / "config.json").read_text())
    assert not set(config["record"]["scoring_set"]) & set(np.load(held_out / "pool_indices.npy").tolist())
    assert json.loads((held_out / "filtering.jsonl").read_text().splitlines()[0])["num_kept"] == 70


@pytest.mark.slow
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


@pytest.mark.slow
def test_filtering_more_than_the_schedule_allows_is_an_error(synthetic_dir, tmp_path, capsys):
    flags = ["--pool-size", "100", "--initial", "10", "--acquire", "10", "--iterations", "6", *TRAIN]
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(out), "--filter-fraction", "0.5", *flags]) == 2
    assert "exceed the pool of 55" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_report_of_a_filter_directory(filtered, tmp_path):
    _, out, _ = filtered
    report = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(report)]) == 0
    page = report.read_text()
    assert '<table id="filtering-filter">' in page and page.count("<tr>") == 1 + 3
    assert page.count('<img alt="') == 3  # the filtering curve and the two illustrations
    assert main(["report", str(out), "--out", str(tmp_path / "report.txt")]) == 2


def test_the_default_curve_runs_from_the_whole_pool_to_most_of_it_removed():
    assert FRACTIONS[0] == 0.0 and all(0 <= f < 1 for f in FRACTIONS)
    assert list(FRACTIONS) == sorted(set(FRACTIONS)) and FRACTIONS[-1] >= 0.9  # the seed paper's curve


def tiny_problem(size: int):
    """A 3-class MLP, its initial parameters, and `size` random 4-dim inputs as both pool and test set."""
    model = build_model("mlp", (4,), 3, hidden_sizes=(8,))
    inputs = jnp.asarray(np.random.default_rng(0).normal(size=(size, 4)), jnp.float32)
    labels = np.arange(size) % 3
    return model, model.init(jax.random.key(1)), Data(inputs, inputs, jnp.asarray(labels)), labels


@pytest.mark.slow
def test_the_api_defaults_use_the_loops_number_of_mc_samples(monkeypatch):
    k = LoopConfig._field_defaults["mc_samples"]
    model, params, data, labels = tiny_problem(6)
    key, inputs = jax.random.key(2), data.pool_inputs
    np.testing.assert_array_equal(
        filtering.score_all(key, model, params, inputs, "bald"),
        filtering.score_all(key, model, params, inputs, "bald", mc_samples=k),
    )
    assert filtering.test_metrics(key, model, params, data) == filtering.test_metrics(
        key, model, params, data, mc_samples=k
    )
    asked = []
    monkeypatch.setattr(filtering, "fit", lambda *args: params)
    monkeypatch.setattr(filtering, "test_metrics", lambda *args, mc_samples: asked.append(mc_samples) or (1.0, 0.0))
    filtering.filter_curve(key, model, data, labels, np.linspace(0, 1, 6), fractions=(0.0,), config=TrainConfig())
    assert asked == [k]


def test_skipped_evaluations_leave_the_others_as_they_were_and_the_seed_sets_the_random_removal(monkeypatch):
    """filter_curve(skip=n), as a resumed `jal filter` calls it, trains just the rest, on the same kept pools."""
    model, params, data, labels = tiny_problem(20)
    trained = []
    monkeypatch.setattr(filtering, "fit", lambda key, m, x, y, kept, config: trained.append(sorted(kept)) or params)
    monkeypatch.setattr(filtering, "test_metrics", lambda *args, mc_samples: (0.5, 1.0))

    def curve(**kwargs):
        trained.clear()
        results = filtering.filter_curve(
            jax.random.key(2), model, data, labels, np.linspace(0, 1, 20), fractions=(0.0, 0.3, 0.6),
            config=TrainConfig(), **kwargs,
        )  # fmt: skip
        return results, list(trained)

    full, full_trained = curve()
    assert [(e.fraction, e.removal) for e in full] == [(0.0, "lowest"), (0.3, "lowest"), (0.3, "random"),
                                                       (0.6, "lowest"), (0.6, "random")]  # fmt: skip
    resumed, resumed_trained = curve(skip=2)
    assert resumed == full[2:] and resumed_trained == full_trained[2:]
    assert curve(seed=0)[1] == full_trained  # the default seed is 0
    assert curve(seed=1)[1] != full_trained  # and another seed removes other random samples
