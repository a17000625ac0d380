import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jal.analysis
from jal.cli import main

SMALL = ["--pool-size", "100", "--initial", "10", "--acquire", "5", "--iterations", "2", "--mc-samples", "4",
         "--epochs", "1", "--min-samples-per-epoch", "64", "--chunk-size", "64"]  # fmt: skip


@pytest.mark.slow
def test_run_then_plot_end_to_end(synthetic_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(out), *SMALL]) == 0
    assert "done: 3 rounds, 20 labels" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["num_labeled"] for m in metrics] == [10, 15, 20]
    assert [len(m["acquired"]) for m in metrics] == [5, 5, 0]
    assert all(0 <= m["test_accuracy"] <= 1 for m in metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["loop"]["acquisition"] == "bald" and config["data"]["pool_size"] == 100
    assert config["record"]["pool_size"] == 100 and len(config["record"]["initial_indices"]) == 10
    pool_scores, test_scores = np.load(out / "pool_scores.npy"), np.load(out / "test_scores.npy")
    assert pool_scores.shape == (3, 100) and test_scores.shape == (3, 200) and np.isfinite(pool_scores).all()
    acquired = [i for m in metrics for i in m["acquired"]]
    assert not set(acquired) & set(config["record"]["initial_indices"]) and len(set(acquired)) == 10

    random_run = tmp_path / "random"
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(random_run), "--acquisition", "random",
                 "--skip-test-scores", *SMALL]) == 0  # fmt: skip
    assert not (random_run / "test_scores.npy").exists()
    figure = tmp_path / "fig.png"
    assert main(["plot", str(out), str(random_run), "--out", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000

    # Diagnostics re-score the saved models: more MC samples, less noise.
    flags = ["--data-dir", str(synthetic_dir), "--mc-samples", "4", "64", "--subset", "30", "--repeats", "3"]
    assert main(["analyze", str(out), *flags, "--no-retrain"]) == 0
    without = json.loads((out / "analysis.json").read_text())
    assert not without["retrained"] and "retrain_rise_fraction" not in without["by_mc_samples"]["4"]
    # Each round's sibling is trained on exactly the labels that round's model had.
    trained_on = []

    def recording_fit(key, model, inputs, labels, kept, config):
        trained_on.append(sorted(kept.tolist()))
        return real_fit(key, model, inputs, labels, kept, config)

    real_fit = jal.analysis.fit
    monkeypatch.setattr(jal.analysis, "fit", recording_fit)
    capsys.readouterr()
    assert main(["analyze", str(out), *flags]) == 0
    initial = config["record"]["initial_indices"]
    first, second = (initial + metrics[0]["acquired"], metrics[1]["acquired"])
    assert trained_on == [sorted(initial), sorted(first), sorted(first + second)]
    assert "| 64 |" in capsys.readouterr().out
    analysis = json.loads((out / "analysis.json").read_text())
    by_k = analysis["by_mc_samples"]
    assert analysis["rounds"] == [0, 1, 2] and set(by_k) == {"4", "64"}
    assert len(by_k["4"]["rise_fraction"]) == 2 and len(by_k["4"]["recorded_rise_fraction"]) == 2
    assert len(by_k["4"]["fall_fraction"]) == 2 and analysis["retrained"]
    # Every re-scored round's model got a sibling, trained again on its labels.
    assert len(by_k["4"]["retrain_rise_fraction"]) == 3 and len(by_k["64"]["retrain_rank_correlation"]) == 3
    assert all(-1 <= x <= 1 for x in by_k["64"]["retrain_rank_correlation"])
    assert by_k["64"]["median_noise_sd"] < by_k["4"]["median_noise_sd"]
    assert by_k["4"]["rank_correlation"][0] == 1.0 and all(0 <= x <= 1 for x in by_k["4"]["filter_regret"])

    # The seed's figures: images, and animations with one frame per round or step.
    figures = tmp_path / "figures"
    assert main(["figures", str(out), str(random_run), "--out", str(figures)]) == 0
    for name in ["active_vs_filtering_xkcd.png", "learning_curves.png", "run/diagnostics.png"]:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (figures / "active_vs_filtering_xkcd.svg").read_bytes()[:1000]
    with Image.open(figures / "active_selection_animation.gif") as gif:
        assert gif.n_frames == 40
    for run in ("run", "random"):
        with Image.open(figures / run / "score_evolution_ema.gif") as gif:
            assert gif.n_frames == 3
    assert not (figures / "random" / "diagnostics.png").exists()  # no jal analyze for that run

    # One page with every figure and table.
    report = tmp_path / "report.html"
    assert main(["report", str(out), str(random_run), "--out", str(report)]) == 0
    page = report.read_text()
    images = page.count('<img alt="')
    # learning curves, 2 score evolutions, 1 diagnostics, the curve and the selection animation
    assert images == 6 and page.count("data:image/gif;base64,") == 3
    assert all(f'<table id="{t}">' in page for t in ("runs", "analysis-run"))
    assert page.count("<tr>") == 1 + 2 + 1 + 3  # runs table: header + 2; analysis: header + K=4, 64, recorded


@pytest.mark.slow
def test_run_on_real_mnist_with_no_source_named(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path / "cache"))  # an empty download cache
    monkeypatch.delenv("JAL_MNIST_DIR", raising=False)
    out = tmp_path / "run"
    flags = [*SMALL, "--pool-size", "300", "--initial", "60", "--min-samples-per-epoch", "2000", "--epochs", "2"]
    assert main(["run", "--out", str(out), *flags]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and metrics[-1]["num_labeled"] == 70
    assert min(m["test_accuracy"] for m in metrics) > 0.5  # far above chance (0.1) from 60 to 70 labels
    source = json.loads((out / "config.json").read_text())["record"]["data"]
    assert source["origin"] == "repository" and source["path"] == str(mnist_dir)
    assert source["md5"]["train-images-idx3-ubyte"] == "6bbc9ace898e44ae57da46a324031adb"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--iterations", "-1"], "below the minimum 0"),
        (["--mc-samples", "0"], "below the minimum 1"),
        (["--lr", "nan"], "finite number"),
        (["--acquisition", "magic"], "invalid choice"),
        (["--pool-size", "ten"], "not an integer"),
        (["--seed", str(2**32)], "above the maximum"),
        (["--data-dir", "a", "--tfds", "b"], "not allowed with"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--out", str(tmp_path / "run"), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--iterations", "100", "--acquire", "50"], "exceed the pool"),
        (["--pool-size", "601"], "--pool-size 601 must be between 1 and the 600 training samples"),
        (["--initial", "200"], "--initial 200"),
        (["--tfds-data-dir", "b"], "--tfds-data-dir is for TFDS data, not with --data-dir; name one source"),
        (["--model", "mlp", "--conv", "im2col"], "--conv does not apply to --model mlp; it takes --hidden-sizes"),
        (["--model", "cnn", "--scorer", "vmapped"], "--scorer does not apply to --model cnn; it takes --conv"),
        (["--iterations", "1", "--acquisition", "batchbald", "--sampling", "power"], "does not apply to batchbald"),
        (["--iterations", "1", "--acquisition", "powerbald", "--sampling", "softmax"], "already sets --sampling power"),
    ],
)
def test_impossible_settings_exit_2_before_anything_is_written(synthetic_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["run", "--data-dir", str(synthetic_dir), "--out", str(out), "--pool-size", "100", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_data_dir_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jal.cli", "run", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("jal: error:") and "nowhere: no such folder" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_unusable_out_fails_before_loading_data(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = ["run", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "file" / "run")]
    assert main(args) == 2
    assert "cannot create it under" in capsys.readouterr().err  # not the missing data: --out is checked first


def test_plot_rejects_what_is_not_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "f.png")]) == 2
    assert "a jal run or filter directory?" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "f.txt")]) == 2
