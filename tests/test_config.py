import json
import subprocess
import sys

import numpy as np
import pytest

from jal.cli import main
from jal.config import FilterConfig, ModelSpec, RunConfig, from_json, get, override, to_json
from jal.errors import JalError
from jal.train import TrainConfig

SMALL = ["--pool-size", "80", "--initial", "10", "--acquire", "4", "--iterations", "2", "--mc-samples", "4",
         "--epochs", "1", "--min-samples-per-epoch", "64", "--chunk-size", "64"]  # fmt: skip


def test_every_setting_survives_json_and_defaults_are_the_reference():
    config = RunConfig()
    assert (config.initial, config.iterations, config.seed, config.loop.mc_samples) == (60, 100, 42, 32)
    assert config.loop.train == TrainConfig() and config.model == ModelSpec("lenet5")
    changes = {"loop.mc_samples": 64, "model": ModelSpec("mlp", {"hidden_sizes": (8, 4)}),
               "loop.train.learning_rate": 0.01, "data.path": "x.npz", "loop.acquisition": "epig"}  # fmt: skip
    varied = override(config, changes)
    saved = json.loads(json.dumps(to_json(varied)))
    assert saved["model"] == {"name": "mlp", "settings": {"hidden_sizes": [8, 4], "dropout_rate": 0.5}}
    assert saved["loop"]["train"]["learning_rate"] == 0.01 and "model" not in saved["loop"]
    again = from_json(RunConfig, saved)
    assert to_json(again) == saved and get(again, "loop.mc_samples") == 64 and again.data.path == "x.npz"
    assert again.loop.train.learning_rate == 0.01 and again.model.build((5,), 3).hidden_sizes == (8, 4)
    assert to_json(from_json(FilterConfig, to_json(FilterConfig()))) == to_json(FilterConfig())
    with pytest.raises(JalError, match="unknown setting mc_sample"):
        from_json(RunConfig, {**saved, "loop": {**saved["loop"], "mc_sample": 3}})
    with pytest.raises(JalError, match="not a JSON object"):
        from_json(RunConfig, {**saved, "data": [1]})


def run_files(run_dir):
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        del m["seconds"]
    arrays = {f.name: np.load(f) for f in sorted(run_dir.glob("*.npy"))}
    return metrics, arrays


@pytest.mark.slow
def test_config_replays_a_run_and_flags_vary_it(synthetic_dir, tmp_path, capsys):
    first, replay, varied = tmp_path / "first", tmp_path / "replay", tmp_path / "varied"
    assert (
        main(["run", "--data-dir", str(synthetic_dir), "--out", str(first), "--acquisition", "powerbald", *SMALL]) == 0
    )
    assert main(["run", "--config", str(first / "config.json"), "--out", str(replay)]) == 0
    (metrics, arrays), (again, arrays_again) = run_files(first), run_files(replay)
    assert metrics == again and arrays.keys() == arrays_again.keys() == {
        "models.npy", "pool_indices.npy", "pool_scores.npy", "test_scores.npy"
    }  # fmt: skip
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays_again[name])
    saved = json.loads((first / "config.json").read_text())
    assert saved["loop"]["acquisition"] == "bald" and saved["loop"]["sampling"] == "power"
    # A flag changes its setting only; another model starts from its own defaults.
    flags = ["--model", "mlp", "--hidden-sizes", "32", "--iterations", "1", "--seed", "7"]
    assert main(["run", "--config", str(first / "config.json"), "--out", str(varied), *flags]) == 0
    config = json.loads((varied / "config.json").read_text())
    assert config["model"] == {"name": "mlp", "settings": {"hidden_sizes": [32], "dropout_rate": 0.5}}
    assert (config["iterations"], config["seed"], config["loop"]["sampling"]) == (1, 7, "power")
    assert config["loop"]["mc_samples"] == 4 and config["data"] == saved["data"]
    capsys.readouterr()
    assert main(["run", "--config", str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere.json: cannot read" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_drawing_a_figure_does_not_import_the_training_stack():
    code = (
        "import sys, jal.figures, jal.report, jal.store\n"
        "print(sorted(m for m in ('optax', 'flax', 'jax', 'jal.native', 'jal.train', 'tensorflow_datasets') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    # And a run imports TFDS only when it reads TFDS.
    code = "import sys, jal.experiment, jal.cli\nprint('tensorflow_datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("x_test"), "missing key x_test"),
        (lambda d: d.update(y_train=d["y_train"] + 0.5), "float64 labels; labels must be integers 0..C-1"),
        (lambda d: d["x_train"].__setitem__(5, np.nan), "input 5 holds NaN or inf"),
        (lambda d: d.update(x_test=d["x_test"][:, :3]), "inputs of shape [3] but training inputs of shape [6]"),
        (lambda d: d.update(x_train=d["x_train"][:0], y_train=d["y_train"][:0]), "no samples"),
    ],
)
def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    rng = np.random.default_rng(0)
    data = {"x_train": rng.normal(size=(50, 6)), "y_train": np.arange(50) % 3,
            "x_test": rng.normal(size=(20, 6)), "y_test": np.arange(20) % 3}  # fmt: skip
    change(data)
    np.savez(tmp_path / "data.npz", **data)
    out = tmp_path / "run"
    assert main(["run", "--data", str(tmp_path / "data.npz"), "--model", "mlp", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "data.npz" in err and err.count("\n") == 1 and err.startswith("jal: error:")
    assert not out.exists()


def test_a_pool_larger_than_the_training_split_and_the_wrong_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(50, 6)), y_train=np.arange(50) % 3,
             x_test=rng.normal(size=(20, 6)), y_test=np.arange(20) % 3)  # fmt: skip
    for flags, message in [
        (["--model", "mlp", "--pool-size", "51"], "--pool-size 51 must be between 1 and the 50 training samples"),
        ([], "lenet5 takes 28x28x1 images, not 6; use --model cnn or mlp"),
    ]:
        assert main(["run", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "run"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not (tmp_path / "run").exists()
