"""Every kind of damage to a run or filter directory gets a one-line JalError before anything is written."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest

import jal.report
from jal import outputs, store
from jal.cli import main
from jal.config import FilterConfig, ModelSpec, RunConfig, to_json
from jal.errors import JalError
from jal.figures import check_directories, plot_runs

POOL, TEST, ROUNDS, PARAMS = 10, 4, 4, 5
INITIAL = [0, 1]
ACQUIRED = [[4, 2], [5, 3], [7, 8]]  # three finished rounds of four: the last is still running


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rows(width: int, finished: int = len(ACQUIRED), seed: int = 0) -> np.ndarray:
    """float32 [ROUNDS, width]: values in the finished rounds, NaN in the others."""
    array = np.full((ROUNDS, width), np.nan, np.float32)
    array[:finished] = np.random.default_rng(seed).random((finished, width))
    return array


def metrics_line(iteration: int) -> dict:
    return {
        "iteration": iteration,
        "num_labeled": len(INITIAL) + sum(len(a) for a in ACQUIRED[:iteration]),
        "test_accuracy": 0.5,
        "test_nll": 1.25,
        "train_loss": [0.7],
        "acquired": ACQUIRED[iteration],
        "acquired_scores": [0.1] * len(ACQUIRED[iteration]),
        "mean_pool_score": 0.2,
        "max_pool_score": 0.3,
        "seconds": 0.5,
    }


def analysis() -> dict:
    rounds = list(range(len(ACQUIRED)))
    entry = {
        "median_noise_sd": 0.01,
        "median_score": 0.2,
        "rise_fraction": [0.1, 0.2],
        "fall_fraction": [0.3, 0.2],
        "rise_since_start": [0.0, 0.1, 0.2],
        "fall_since_start": [0.0, 0.3, 0.4],
        "rank_correlation": [1.0, 0.5, float("nan")],
        "filter_regret": [0.0, 0.5],
        "retrain_rise_fraction": [0.1, 0.1, 0.1],
        "retrain_rank_correlation": [0.9, 0.8, 0.7],
    }
    return {
        "run_dir": "run",
        "score": "bald",
        "run_mc_samples": 4,
        "seed": 0,
        "rounds": rounds,
        "subset_size": 5,
        "repeats": 2,
        "z": 2.0,
        "retrained": True,
        "filter_fractions": [0.1, 0.5],
        "recorded": {"rank_correlation": [1.0, 0.4, 0.3], "filter_regret": [0.0, 0.5]},
        "by_mc_samples": {"4": entry},
    }


def record(**facts) -> dict:
    return {
        "data": {"kind": "arrays", "path": "d.npz", "md5": {"d.npz": "0" * 32}},
        "input_shape": [3],
        "num_classes": 2,
        "pool_size": POOL,
        "model": {"hidden_sizes": [4], "dropout_rate": 0.5},
        **facts,
        "backend": "cpu",
        "versions": {"python": "3.11", "jal": "0.1.0"},
    }


def run_files() -> dict[str, bytes]:
    """The files of a valid run directory, the way jal writes them, interrupted in its last round."""
    config = to_json(RunConfig(model=ModelSpec("mlp"), iterations=ROUNDS - 1, initial=len(INITIAL)))
    config["loop"]["acquire"] = len(ACQUIRED[0])
    config["record"] = record(
        filtered_pool_size=POOL, initial_indices=INITIAL, score_name="bald", consistent_masks=False
    )
    lines = "".join(json.dumps(metrics_line(i)) + "\n" for i in range(len(ACQUIRED)))
    return {
        store.CONFIG: json.dumps(config, indent=2).encode(),
        store.METRICS: lines.encode() + b'{"iteration": 3, "num_lab',  # a write cut short by the interruption
        store.POOL_INDICES: npy_bytes(np.arange(POOL, dtype=np.int64) * 3),
        store.POOL_SCORES: npy_bytes(rows(POOL)),
        store.TEST_SCORES: npy_bytes(rows(TEST, seed=1)),
        store.MODELS: npy_bytes(rows(PARAMS, seed=2)),
        store.ANALYSIS: json.dumps(analysis()).encode(),
    }


def filter_files() -> dict[str, bytes]:
    """The files of a valid filter directory."""
    config = to_json(FilterConfig(model=ModelSpec("mlp"), fractions=(0.0, 0.5)))
    config["record"] = record(scoring_set=INITIAL)
    evaluations = [
        {"fraction": 0.0, "removal": "lowest", "num_kept": POOL, "test_accuracy": 0.5, "test_nll": 1.0},
        {"fraction": 0.5, "removal": "lowest", "num_kept": 6, "test_accuracy": 0.25, "test_nll": 1.5},
        {"fraction": 0.5, "removal": "random", "num_kept": 6, "test_accuracy": 0.75, "test_nll": 0.5},
    ]
    return {
        store.CONFIG: json.dumps(config, indent=2).encode(),
        store.FILTERING: "".join(json.dumps(e) + "\n" for e in evaluations).encode(),
        store.POOL_INDICES: npy_bytes(np.arange(POOL, dtype=np.int64)),
        store.FILTER_SCORES: npy_bytes(np.random.default_rng(3).random(POOL).astype(np.float32)),
    }


def write_dir(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


# Damage: each takes the files of a valid directory and returns them damaged --------------------------------


def edit_json(name: str, change):
    def damage(files):
        value = json.loads(files[name])
        change(value)
        return {**files, name: json.dumps(value).encode()}

    return damage


def edit_line(name: str, number: int, change):
    """Changes the object on line `number` (from 1) of a .jsonl file."""

    def damage(files):
        lines = files[name].split(b"\n")
        record = json.loads(lines[number - 1])
        change(record)
        lines[number - 1] = json.dumps(record).encode()
        return {**files, name: b"\n".join(lines)}

    return damage


def edit_array(name: str, change):
    def damage(files):
        array = np.load(io.BytesIO(files[name]))
        return {**files, name: npy_bytes(change(array))}

    return damage


def replace(name: str, content: bytes):
    return lambda files: {**files, name: content}


def remove(name: str):
    return lambda files: {n: b for n, b in files.items() if n != name}


def set_key(path: str, value):
    *parents, last = path.split(".")

    def change(obj):
        for key in parents:
            obj = obj[key]
        obj[last] = value

    return change


def delete_key(path: str):
    *parents, last = path.split(".")

    def change(obj):
        for key in parents:
            obj = obj[key]
        del obj[last]

    return change


def nan_row(row: int):
    def change(array):
        array[row] = np.nan
        return array

    return change


def pickled(files_name: str):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return replace(files_name, buffer.getvalue())


M, C, PS = store.METRICS, store.CONFIG, store.POOL_SCORES
RUN_DAMAGE = {
    # config.json
    "config missing": (remove(C), "config.json: cannot read .*No such file"),
    "config empty": (replace(C, b""), "config.json: cannot read \\(the file is empty\\)"),
    "config cut short": (lambda f: {**f, C: f[C][:50]}, "config.json: cannot read \\(Expecting value"),
    "config not UTF-8": (replace(C, b'{"a": "\xff"}'), "config.json: cannot read \\('utf-8' codec"),
    "config nested too deep": (replace(C, b"[" * 100_000), "config.json: cannot read \\(maximum recursion"),
    "config of another program": (replace(C, b'{"name": "x", "version": 1}'), "config.json: not a jal config.json"),
    "config a list": (replace(C, b"[1, 2]"), "config.json: not a jal config.json"),
    "config record not an object": (edit_json(C, set_key("record", [])), "its 'record' is not an object"),
    "config key missing": (edit_json(C, delete_key("record.filtered_pool_size")), "no 'record.filtered_pool_size'"),
    "config text for integer": (edit_json(C, set_key("loop.mc_samples", "32")), "'loop.mc_samples' is text, not an"),
    "config boolean for integer": (edit_json(C, set_key("iterations", True)), "'iterations' is true or false"),
    "config null model name": (edit_json(C, set_key("model.name", None)), "'model.name' is null, not text"),
    "config index of another type": (
        edit_json(C, set_key("record.initial_indices", [0, "1"])),
        "'record.initial_indices\\[1\\]' is text",
    ),
    "config filtered pool larger": (edit_json(C, set_key("record.filtered_pool_size", 11)), "a pool of 11 of 10"),
    "config negative iterations": (edit_json(C, set_key("iterations", -1)), "-1 iterations"),
    "config initial label outside the pool": (
        edit_json(C, set_key("record.initial_indices", [0, 10])),
        "'record.initial_indices': 10 is outside the pool of 10",
    ),
    # metrics.jsonl
    "metrics missing": (remove(M), "metrics.jsonl: cannot read"),
    "metrics a folder": (lambda f: {**f, M: "folder"}, "metrics.jsonl: cannot read .*Is a directory"),
    "metrics empty": (replace(M, b""), "no finished round yet"),
    "metrics not UTF-8": (lambda f: {**f, M: b"\xff\xfe" + f[M]}, "metrics.jsonl: cannot read \\('utf-8'"),
    "metrics line not JSON": (lambda f: {**f, M: f[M].replace(b"}\n", b"\n", 1)}, "metrics.jsonl:1: not JSON"),
    "metrics line not an object": (lambda f: {**f, M: b"[1]\n" + f[M]}, "metrics.jsonl:1: a list, not a JSON obj"),
    "metrics key missing": (edit_line(M, 2, delete_key("acquired")), "metrics.jsonl:2: no 'acquired'"),
    "metrics text for a list": (edit_line(M, 2, set_key("acquired", "5 3")), "'acquired' is text, not a list"),
    "metrics text for a number": (edit_line(M, 2, set_key("test_nll", "low")), "'test_nll' is text, not a number"),
    "metrics accuracy above 1": (edit_line(M, 1, set_key("test_accuracy", 1.5)), "is 1.5, not a number from 0 to 1"),
    "metrics accuracy NaN": (edit_line(M, 1, set_key("test_accuracy", float("nan"))), "is nan, not a number from"),
    "metrics NLL beyond a float": (
        edit_line(M, 3, set_key("test_nll", 10**400)),
        "metrics.jsonl:3: 'test_nll' is an integer too large for a number",
    ),
    "metrics rounds out of order": (
        edit_line(M, 2, set_key("iteration", 5)),
        "iteration 5 with 4 labels and 2 acquired, not 1",
    ),
    "metrics labels not adding up": (
        edit_line(M, 3, set_key("num_labeled", 9)),
        "9 labels and 2 acquired, not 2 with 6",
    ),
    "metrics fewer acquired": (edit_line(M, 2, set_key("acquired", [5])), "1 acquired, not 1 with 4 and 2"),
    "metrics acquired outside the pool": (
        edit_line(M, 1, set_key("acquired", [4, 10])),
        "metrics.jsonl:1: 'acquired': 10 is outside the pool of 10",
    ),
    "metrics negative acquired": (edit_line(M, 1, set_key("acquired", [4, -1])), "-1 is outside the pool"),
    "metrics more rounds than the run has": (
        lambda f: edit_json(C, set_key("iterations", 1))(f),
        "3 rounds, more than the 2 of config.json",
    ),
    # pool_scores.npy, test_scores.npy, models.npy, pool_indices.npy
    "pool scores missing": (remove(PS), "pool_scores.npy: cannot read .*No such file"),
    "pool scores a folder": (lambda f: {**f, PS: "folder"}, "pool_scores.npy: cannot read .*Is a directory"),
    "pool scores empty": (replace(PS, b""), "pool_scores.npy: cannot read"),
    "pool scores not .npy": (replace(PS, b"PK\x03\x04 an npz"), "pool_scores.npy: cannot read"),
    "pool scores pickled": (pickled(PS), "pool_scores.npy: holds object"),
    "pool scores damaged header": (
        lambda f: {**f, PS: f[PS][:10] + b"{'descr': '<f4', 'shape': (4,\x00" + f[PS][40:]},
        "pool_scores.npy: cannot read",
    ),
    "pool scores cut short": (lambda f: {**f, PS: f[PS][:-1]}, "pool_scores.npy: .* bytes where its header"),
    "pool scores too long": (lambda f: {**f, PS: f[PS] + b"\0" * 4}, "pool_scores.npy: .* bytes where its header"),
    "pool scores float64": (
        edit_array(PS, lambda a: a.astype(np.float64)),
        "holds float64 of shape \\(4, 10\\), not float32 or float16 with 2 axes",
    ),
    "pool scores one axis": (edit_array(PS, lambda a: a.ravel()), "not float32 or float16 with 2 axes"),
    "pool scores another pool": (edit_array(PS, lambda a: a[:, :9]), "shape \\(4, 9\\) where config.json implies"),
    "pool scores other rounds": (edit_array(PS, lambda a: a[:3]), "shape \\(3, 10\\) where config.json implies"),
    "pool scores finished round NaN": (edit_array(PS, nan_row(1)), "pool_scores.npy: round 1 finished but holds"),
    "pool scores inf": (edit_array(PS, lambda a: np.where(a > 0.5, np.inf, a)), "finished but holds NaN or inf"),
    "test scores missing": (remove(store.TEST_SCORES), "test_scores.npy: cannot read"),
    "test scores other rounds": (edit_array(store.TEST_SCORES, lambda a: a[:2]), "test_scores.npy: holds shape"),
    "test scores finished round NaN": (edit_array(store.TEST_SCORES, nan_row(0)), "test_scores.npy: round 0"),
    "models missing": (remove(store.MODELS), "models.npy: cannot read"),
    "models of no parameters": (edit_array(store.MODELS, lambda a: a[:, :0]), "models.npy: holds shape \\(4, 0\\)"),
    "models finished round NaN": (edit_array(store.MODELS, nan_row(2)), "models.npy: round 2 finished"),
    "pool indices floats": (
        edit_array(store.POOL_INDICES, lambda a: a.astype(np.float32)),
        "pool_indices.npy: holds float32 of shape \\(10,\\), not integers",
    ),
    "pool indices another pool": (edit_array(store.POOL_INDICES, lambda a: a[:5]), "pool_indices.npy: holds shape"),
    "pool indices negative": (edit_array(store.POOL_INDICES, lambda a: a - 3), "pool_indices.npy: negative"),
}
A = store.ANALYSIS
ANALYSIS_DAMAGE = {
    "analysis not JSON": (replace(A, b"{"), "analysis.json: cannot read"),
    "analysis key missing": (edit_json(A, delete_key("subset_size")), "no 'subset_size', not a jal analysis"),
    "analysis curve missing": (
        edit_json(A, delete_key("by_mc_samples.4.rise_fraction")),
        "no 'by_mc_samples.4.rise_fraction'",
    ),
    "analysis curve too short": (
        edit_json(A, set_key("by_mc_samples.4.rank_correlation", [1.0, 0.5])),
        "'by_mc_samples.4.rank_correlation' has 2 values, not 3",
    ),
    "analysis half a pair of curves": (
        edit_json(A, delete_key("by_mc_samples.4.fall_since_start")),
        "lacks one of the curves",
    ),
    "analysis fraction above 1": (
        edit_json(A, set_key("by_mc_samples.4.filter_regret", [0.0, 2.0])),
        "is 2.0, not a number from 0 to 1",
    ),
    "analysis rounds beyond the record": (edit_json(A, set_key("rounds", [0, 1, 5])), "'rounds' are not rounds"),
    "analysis regret per fraction": (
        edit_json(A, set_key("recorded.filter_regret", [0.0])),
        "'recorded.filter_regret' has not one value per filter fraction",
    ),
}
F = store.FILTERING
FILTER_DAMAGE = {
    "filter config without estimator": (edit_json(C, delete_key("estimator")), "config.json: no 'estimator'"),
    "filter evaluations empty": (replace(F, b""), "no finished evaluation yet"),
    "filter evaluations a folder": (lambda f: {**f, F: "folder"}, "filtering.jsonl: cannot read"),
    "filter evaluation key missing": (edit_line(F, 2, delete_key("num_kept")), "filtering.jsonl:2: no 'num_kept'"),
    "filter unknown removal": (edit_line(F, 2, set_key("removal", "highest")), "by removal 'highest', not one of"),
    "filter NLL beyond a float": (edit_line(F, 1, set_key("test_nll", -(10**309))), "'test_nll' is an integer too"),
    "filter more kept than the pool": (edit_line(F, 1, set_key("num_kept", 11)), "11 kept of 10"),
    "filter scores missing": (remove(store.FILTER_SCORES), "filter_scores.npy: cannot read"),
    "filter scores another pool": (edit_array(store.FILTER_SCORES, lambda a: a[:4]), "filter_scores.npy: holds shape"),
    "filter scores NaN": (edit_array(store.FILTER_SCORES, nan_row(3)), "filter_scores.npy: holds NaN or inf"),
    "filter pool indices pickled": (pickled(store.POOL_INDICES), "pool_indices.npy: holds object"),
}


def damaged_dir(tmp_path: Path, files: dict, damage) -> Path:
    directory = tmp_path / "dir"
    for name, content in damage(files).items():
        if content == "folder":
            (directory / name).mkdir(parents=True)
        else:
            write_dir(directory, {name: content})
    return directory


def check_refused(directory: Path, message: str) -> str:
    with pytest.raises(JalError, match=message) as error:
        store.check_directory(directory)
    text = str(error.value)
    assert "\n" not in text and text.startswith(str(directory)), text
    return text


@pytest.mark.parametrize("case", RUN_DAMAGE)
def test_each_damage_to_a_run_directory_is_refused(case, tmp_path):
    damage, message = RUN_DAMAGE[case]
    check_refused(damaged_dir(tmp_path, run_files(), damage), message)


@pytest.mark.parametrize("case", ANALYSIS_DAMAGE)
def test_each_damage_to_an_analysis_is_refused(case, tmp_path):
    damage, message = ANALYSIS_DAMAGE[case]
    run = damaged_dir(tmp_path, run_files(), damage)
    store.check_directory(run)  # `jal analyze` writes it anew; the figures and the report read it
    with pytest.raises(JalError, match=message):
        check_directories([run])


@pytest.mark.parametrize("case", FILTER_DAMAGE)
def test_each_damage_to_a_filter_directory_is_refused(case, tmp_path):
    damage, message = FILTER_DAMAGE[case]
    check_refused(damaged_dir(tmp_path, filter_files(), damage), message)


def test_what_a_run_leaves_unfinished_is_not_damage(tmp_path):
    files = run_files()
    # The running round wrote some of its rows, not yet its metrics line; its status and lock are there too.
    files[PS] = npy_bytes(np.where(np.isnan(rows(POOL)), 7.0, rows(POOL)).astype(np.float32))
    files[M] += b"0}"  # its last line whole but for the newline: still not committed
    files[store.STATUS], files[".lock"] = b'{"state": "running"}', b"123"
    run = write_dir(tmp_path / "run", files)
    store.check_directory(run)
    assert len(store.read_metrics(run)) == len(ACQUIRED)
    assert store.read_history(run)[2].shape == (len(ACQUIRED), POOL)
    for name in (store.STATUS, ".lock"):
        (run / name).write_bytes(b"\xff{ not JSON")
    store.check_directory(run)
    filter_dir = write_dir(tmp_path / "filter", {**filter_files(), F: filter_files()[F] + b'{"fraction": 0.7'})
    store.check_directory(filter_dir)
    assert len(store.read_filtering(filter_dir)) == 3


def test_a_filter_directory_is_not_a_run_and_a_file_no_directory(tmp_path):
    filter_dir = write_dir(tmp_path / "filter", filter_files())
    with pytest.raises(JalError, match="a jal filter directory, not a run"):
        store.check_run_dir(filter_dir)
    with pytest.raises(JalError, match="nowhere: no such directory"):
        store.check_directory(tmp_path / "nowhere")
    with pytest.raises(JalError, match="config.json: no such directory"):
        store.check_directory(filter_dir / store.CONFIG)


@pytest.mark.slow
def test_a_real_run_and_filter_pass_the_checks(tmp_path, capsys):
    """The forms are what jal writes: checked against directories `jal run` and `jal filter` made."""
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.random((40, 3)), y_train=rng.integers(0, 2, 40), x_test=rng.random((8, 3)),
             y_test=rng.integers(0, 2, 8))  # fmt: skip
    small = ["--data", str(data), "--model", "mlp", "--hidden-sizes", "4", "--initial", "4", "--mc-samples", "2",
             "--epochs", "1", "--min-samples-per-epoch", "8", "--batch-size", "8"]  # fmt: skip
    assert main(["run", "--out", str(tmp_path / "run"), *small, "--iterations", "2", "--acquire", "2"]) == 0
    assert main(["filter", "--out", str(tmp_path / "filter"), *small, "--fractions", "0", "0.5"]) == 0
    store.check_directory(tmp_path / "run")
    store.check_directory(tmp_path / "filter")


# The commands: exit 2, one line on stderr, nothing written -------------------------------------------------

CLI_DAMAGE = {  # one of each kind
    "missing file": remove(store.MODELS),
    "a folder for a file": lambda f: {**f, M: "folder"},
    "not JSON": replace(C, b"{"),
    "another program's JSON": replace(C, b'{"name": "x"}'),
    "wrong type": RUN_DAMAGE["config text for integer"][0],
    "out of range": RUN_DAMAGE["metrics accuracy above 1"][0],
    "index outside the pool": RUN_DAMAGE["metrics acquired outside the pool"][0],
    "wrong dtype": RUN_DAMAGE["pool scores float64"][0],
    "pickled": pickled(store.TEST_SCORES),
    "truncated": RUN_DAMAGE["pool scores cut short"][0],
    "shapes disagreeing": RUN_DAMAGE["pool scores another pool"][0],
    "finished round NaN": RUN_DAMAGE["pool scores finished round NaN"][0],
    "no finished round": RUN_DAMAGE["metrics empty"][0],
}


def out_args(command: str, tmp_path: Path) -> list[str]:
    out = {"plot": "plots/fig.png", "figures": "figures", "report": "reports/report.html"}.get(command)
    return ["--out", str(tmp_path / "out" / out)] if out else ["--data", str(tmp_path / "nowhere.npz")]


@pytest.mark.parametrize("command", ["plot", "figures", "report", "analyze"])
@pytest.mark.parametrize("case", CLI_DAMAGE)
def test_commands_refuse_damage_before_writing(command, case, tmp_path, capsys):
    run = damaged_dir(tmp_path, run_files(), CLI_DAMAGE[case])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main([command, str(run), *out_args(command, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jal: error: {run}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.parametrize("command", ["figures", "report"])
def test_a_damaged_analysis_or_filter_is_refused_before_writing(command, tmp_path, capsys):
    run = damaged_dir(tmp_path / "a", run_files(), ANALYSIS_DAMAGE["analysis curve too short"][0])
    filter_dir = damaged_dir(tmp_path / "b", filter_files(), FILTER_DAMAGE["filter unknown removal"][0])
    for directory in (run, filter_dir):
        assert main([command, str(directory), *out_args(command, tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jal: error: {directory}") and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()


def test_plot_draws_the_finished_rounds_of_a_running_run(tmp_path):
    run = write_dir(tmp_path / "run", run_files())
    out = tmp_path / "plots" / "fig.svg"
    assert plot_runs([run], out) == out
    assert b"<svg" in out.read_bytes()[:1000] and "round 2" in out.read_text() and "round 3" not in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["fig.svg"]


# What the operating system refuses: a one-line JalError, and nothing half-written ----------------------------


def fail_after_writing_some(*args, **kwargs):
    target = args[1] if len(args) > 1 else kwargs["fname"]
    Path(target).write_bytes(b"\x89PNG half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_plot_on_a_full_disk_leaves_the_old_figure(tmp_path, monkeypatch, capsys):
    run = write_dir(tmp_path / "run", run_files())
    out = tmp_path / "fig.png"
    out.write_bytes(b"the old figure")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_after_writing_some)
    assert main(["plot", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot write it ([Errno 28] No space left on device)" in err and err.count("\n") == 1
    assert out.read_bytes() == b"the old figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "run"]


def test_figures_on_a_full_disk_write_none(tmp_path, monkeypatch, capsys):
    run = write_dir(tmp_path / "run", run_files())
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_after_writing_some)
    assert main(["figures", str(run), "--out", str(tmp_path / "new" / "figures")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("mine")
    assert main(["figures", str(run), "--out", str(tmp_path / "kept")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "run"]
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_report_on_a_full_disk_leaves_the_old_page(tmp_path, monkeypatch, capsys):
    run = write_dir(tmp_path / "run", run_files())
    out = tmp_path / "report.html"
    out.write_text("the old page")
    monkeypatch.setattr(jal.report, "_page", lambda directories, figures: "<html>" * 1000)
    real_write_text = Path.write_text

    def full(path, text, *args, **kwargs):
        real_write_text(path, text[:10], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["report", str(run), "--out", str(out)]) == 2
    monkeypatch.undo()
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_text() == "the old page" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run"]


def test_names_and_places_the_system_refuses(tmp_path, capsys):
    run = write_dir(tmp_path / "run", run_files())
    (tmp_path / "a file").write_text("x")
    cases = [
        ["plot", str(run), "--out", str(tmp_path / ("x" * 300 + ".png"))],  # a name too long
        ["plot", str(run), "--out", str(tmp_path / "a file" / "fig.png")],  # a file where a folder goes
        ["figures", str(run), "--out", str(tmp_path / "a file" / "figures")],
        ["report", str(run), "--out", str(tmp_path / "deep" / "a" / ("x" * 300 + ".html"))],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("jal: error: --out") and "cannot write it" in err and err.count("\n") == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "run"]


@pytest.mark.skipif(os.geteuid() == 0, reason="the superuser writes into any folder")
def test_a_folder_not_writable(tmp_path, capsys):
    run = write_dir(tmp_path / "run", run_files())
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["plot", str(run), "--out", str(locked / "fig.png")]) == 2
    assert "Permission denied" in capsys.readouterr().err and not any(locked.iterdir())


def test_figures_join_an_existing_folder_whole(tmp_path):
    out = tmp_path / "figures"
    (out / "run").mkdir(parents=True)
    (out / "mine.txt").write_text("mine")
    (out / "old.png").write_text("old")
    with outputs.new_folder(out) as folder:
        (folder / "old.png").write_text("new")
        (folder / "run").mkdir()
        (folder / "run" / "a.gif").write_text("a")
    assert (out / "mine.txt").read_text() == "mine" and (out / "old.png").read_text() == "new"
    assert (out / "run" / "a.gif").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["figures"]
    (out / "run" / "a.gif").unlink()
    (out / "run" / "a.gif").mkdir()  # a folder in the way of a figure: nothing moves
    with pytest.raises(JalError, match="a.gif is in the way of run/a.gif"), outputs.new_folder(out) as folder:
        (folder / "old.png").write_text("newer")
        (folder / "run").mkdir()
        (folder / "run" / "a.gif").write_text("b")
    assert (out / "old.png").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


def test_an_output_of_the_wrong_kind_is_refused_before_drawing(tmp_path, capsys):
    run = write_dir(tmp_path / "run", run_files())
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("mine")
    for argv, message in [
        (["plot", str(run), "--out", str(tmp_path / "folder.png")], "folder.png: a folder; give a file name"),
        (["figures", str(run), "--out", str(tmp_path / "file")], "file: a file, not a folder"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.png", "run"]
    assert (tmp_path / "file").read_text() == "mine" and not any((tmp_path / "folder.png").iterdir())


def test_arrays_in_the_other_byte_order_are_read(tmp_path):
    """A big-endian models.npy is a model too: jax takes its rows in this machine's byte order."""
    files = run_files()
    for name in (store.POOL_SCORES, store.MODELS):
        files[name] = npy_bytes(np.load(io.BytesIO(files[name])).astype(">f4"))
    run = write_dir(tmp_path / "run", files)
    store.check_directory(run)
    model = store.read_model(run, 1, {"w": np.zeros(PARAMS, np.float32)})
    np.testing.assert_array_equal(model["w"], rows(PARAMS, seed=2)[1])
