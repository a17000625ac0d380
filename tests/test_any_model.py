"""Every command works for every model: runs, analysis, filtering and saved models, on real and colour data."""

import json

import numpy as np
import pytest

from jal.cli import main

pytestmark = pytest.mark.slow  # every test here trains through whole `jal run`s

TRAIN = ["--epochs", "2", "--min-samples-per-epoch", "256", "--mc-samples", "8", "--chunk-size", "64"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's 1,797 real 8x8 digits as 64-dim feature vectors, split 1,297 / 500."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed (pip install 'jal[test]')")
    x, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1297], order[1297:]
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x[train].astype(np.float32), y_train=y[train], x_test=x[test].astype(np.float32),
             y_test=y[test])  # fmt: skip
    return path


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory):
    """8x8 colour images of 3 classes: a bright patch in a class-dependent corner and colour."""
    rng = np.random.default_rng(1)

    def make(n):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 80, (n, 8, 8, 3)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 4 * (c % 2) : 4 * (c % 2) + 4, 4 * (c // 2) : 4 * (c // 2) + 4, c] = 255
        return images, labels

    folder = tmp_path_factory.mktemp("colour")
    for split, n in (("train", 300), ("test", 100)):
        x, y = make(n)
        np.save(folder / f"x_{split}.npy", x)
        np.save(folder / f"y_{split}.npy", y)
    return folder


def test_mlp_on_real_digits_run_analyze_filter(digits, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [
        "--model",
        "mlp",
        "--initial-per-class",
        "2",
        "--acquire",
        "10",
        "--iterations",
        "3",
        "--lr",
        "0.01",
        "--min-samples-per-epoch",
        "1024",
        "--epochs",
        "3",
    ]
    assert main(["run", "--data", str(digits), "--out", str(out), *TRAIN, *flags]) == 0
    config = json.loads((out / "config.json").read_text())
    record = config["record"]
    assert record["input_shape"] == [64] and record["num_classes"] == 10 and record["pool_size"] == 1297
    assert config["model"] == {"name": "mlp", "settings": {"hidden_sizes": [128, 128], "dropout_rate": 0.5}}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["num_labeled"] for m in metrics] == [20, 30, 40, 50]
    assert metrics[-1]["test_accuracy"] > 0.75  # ten real classes from 50 labels
    # The saved models are the mlp's: 64*128 + 128 + 128*128 + 128 + 128*10 + 10 parameters.
    assert np.load(out / "models.npy").shape == (4, 26_122)
    assert main(["analyze", str(out), "--mc-samples", "4", "16", "--subset", "50", "--repeats", "2"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["retrained"] and analysis["by_mc_samples"]["16"]["median_noise_sd"] > 0
    filtered = tmp_path / "filter"
    assert main(["filter", "--data", str(digits), "--model", "mlp", "--out", str(filtered), "--initial", "40",
                 "--fractions", "0", "0.5", *TRAIN[:-2]]) == 0  # fmt: skip
    evaluations = [json.loads(line) for line in (filtered / "filtering.jsonl").read_text().splitlines()]
    assert [e["num_kept"] for e in evaluations] == [1297, 669, 669]


def test_cnn_on_colour_images_with_batchbald(colour_images, tmp_path):
    out = tmp_path / "run"
    flags = ["--model", "cnn", "--acquisition", "batchbald", "--initial", "12", "--acquire", "4", "--iterations", "2"]
    assert main(["run", "--data", str(colour_images), "--out", str(out), *flags, *TRAIN, "--lr", "0.003"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["record"]["input_shape"] == [8, 8, 3] and config["record"]["model"]["conv"] in ("im2col", "xla")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [len(m["acquired"]) for m in metrics] == [4, 4, 0] and metrics[-1]["test_accuracy"] > 0.5
    assert main(["analyze", str(out), "--mc-samples", "4", "--subset", "20", "--no-retrain"]) == 0
