"""The command line as a whole: `python -m jal`, --version, --quiet, stopping rules, tracking, jal compare."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jal import store
from jal.cli import main
from tests.test_compare import CURVES, write_run
from tests.test_tracking import nested, tensorboard_events, wandb_records

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--pool-size", "300", "--model", "mlp", "--hidden-sizes", "32", "--initial", "10", "--iterations", "3",
         "--mc-samples", "4", "--seed", "3"]  # fmt: skip


def test_python_m_jal_and_version():
    result = subprocess.run([sys.executable, "-m", "jal", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    assert result.stdout.strip().startswith("jal ") and result.stdout.strip() != "jal"
    result = subprocess.run([sys.executable, "-m", "jal", "compare"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "RUN_DIR" in result.stderr


@pytest.fixture(scope="module")
def quiet_run(digits, tmp_path_factory) -> tuple[Path, str, str]:
    """One `jal run --quiet` of SMALL, shared by the tests that start from it: its directory, its stdout and stderr."""
    run = tmp_path_factory.mktemp("quiet") / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--data", str(digits), *SMALL, "--out", str(run), "--quiet"])
    assert code == 0, err.getvalue()
    return run, out.getvalue(), err.getvalue()


def copy_of(quiet_run, tmp_path: Path) -> Path:
    """A test's own copy of the shared run, for the commands that write into it (jal analyze)."""
    return Path(shutil.copytree(quiet_run[0], tmp_path / "run"))


@pytest.mark.slow
def test_quiet_prints_nothing_and_loud_prints_progress(quiet_run, digits, tmp_path, capsys):
    run = copy_of(quiet_run, tmp_path)
    assert quiet_run[1:] == ("", "")
    assert main(["run", "--data", str(digits), *SMALL, "--seed", "4", "--out", str(tmp_path / "loud")]) == 0
    out, err = capsys.readouterr()
    assert "jal run" in err and out.startswith("done: 4 rounds")
    commands = [
        ["filter", "--data", str(digits), "--pool-size", "300", "--model", "mlp", "--initial", "20", "--fractions",
         "0", "0.5", "--mc-samples", "4", "--min-samples-per-epoch", "100", "--out", str(tmp_path / "filter")],
        ["analyze", str(run), "--mc-samples", "4", "--subset", "20", "--no-retrain"],
        ["figures", str(run), "--out", str(tmp_path / "figures")],
        ["report", str(run), "--out", str(tmp_path / "report.html")],
        ["plot", str(run), "--out", str(tmp_path / "plot.png")],
        ["compare", str(run), str(tmp_path / "loud"), "--plot", str(tmp_path / "compare.png")],
    ]  # fmt: skip
    for argv in commands:
        quiet = argv[:1] + argv[1:] + ["--quiet"]
        assert main(quiet) == 0, argv
        out, err = capsys.readouterr()
        if argv[0] == "compare":  # its tables are what it is for
            assert out.startswith("| group") and err == ""
        else:
            assert (out, err) == ("", ""), argv[0]
    assert (tmp_path / "figures").is_dir() and (tmp_path / "report.html").exists()
    assert (tmp_path / "compare.png").exists() and (run / store.ANALYSIS).exists()


@pytest.mark.slow
def test_filter_analyze_and_figures_show_progress(quiet_run, digits, tmp_path, capsys):
    run = copy_of(quiet_run, tmp_path)
    assert main(["analyze", str(run), "--mc-samples", "4", "--subset", "20", "--no-retrain"]) == 0
    assert "jal analyze" in capsys.readouterr().err
    assert main(["figures", str(run), "--out", str(tmp_path / "figures")]) == 0
    err = capsys.readouterr().err
    assert "jal figures" in err and "figure" in err
    assert main(["filter", "--data", str(digits), "--pool-size", "300", "--model", "mlp", "--initial", "20",
                 "--fractions", "0.5", "--mc-samples", "4", "--out", str(tmp_path / "filter")]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "jal filter" in err and "| 50% | lowest |" in out and "| 50% | random |" in out


@pytest.mark.slow
def test_stopping_flags_stop_the_run_and_say_why(digits, tmp_path, capsys):
    argv = [
        "run",
        "--data",
        str(digits),
        *SMALL,
        "--out",
        str(tmp_path / "run"),
        "--max-labels",
        "12",
        "--acquire",
        "2",
    ]
    assert main(argv) == 0
    assert "12 labels, " in capsys.readouterr().out
    assert [m["num_labeled"] for m in store.read_metrics(tmp_path / "run")] == [10, 12]
    assert "budget of 12" in store.read_status(tmp_path / "run")["stopped"]
    assert store.read_config(tmp_path / "run")["stop"]["max_labels"] == 12
    with pytest.raises(SystemExit) as refused:  # argparse refuses it
        main(["run", "--data", str(digits), *SMALL, "--out", str(tmp_path / "x"), "--target-accuracy", "1.5"])
    assert refused.value.code == 2 and "--target-accuracy: 1.5 must be at most 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_jal_run_logs_every_round_to_tensorboard(digits, tmp_path, capsys):
    logdir = tmp_path / "tb"
    assert main(["run", "--data", str(digits), *SMALL, "--out", str(tmp_path / "run"), "--tensorboard", str(logdir),
                 "--quiet"]) == 0  # fmt: skip
    events = tensorboard_events(logdir / "run")
    steps = {e.step for e in events for v in e.summary.value if v.tag == "test/accuracy"}
    assert steps == {m["num_labeled"] for m in store.read_metrics(tmp_path / "run")}
    accuracy = {e.step: v.simple_value for e in events for v in e.summary.value if v.tag == "test/accuracy"}
    for m in store.read_metrics(tmp_path / "run"):
        assert accuracy[m["num_labeled"]] == pytest.approx(m["test_accuracy"])
    assert capsys.readouterr().err == ""


def test_jal_compare_prints_the_tables(tmp_path, capsys):
    dirs = [str(write_run(tmp_path / f"bald-{s}", curve, seed=s)) for s, curve in CURVES.items()]
    dirs += [str(write_run(tmp_path / f"random-{s}", [a - 0.05 for a in curve], acquisition="random", seed=s))
             for s, curve in CURVES.items()]  # fmt: skip
    assert main(["compare", *dirs, "--at", "0.9"]) == 0
    out = capsys.readouterr().out
    bald = next(line for line in out.splitlines() if line.startswith("| bald |"))
    assert "| 3 | 40 (30 to >60), 1 of 3 not reached |" in bald
    assert "| bald - random | final accuracy" in out
    assert main(["compare", *dirs, "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("group,runs,seeds")
    assert main(["compare", str(tmp_path / "absent")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_jal_run_logs_every_round_to_wandb_offline(digits, wandb_env, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb_env / "run"
    assert main(["run", "--data", str(digits), *SMALL, "--out", str(run), "--wandb", "jal-test/bald", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    wandb.teardown()  # its service writes the run file out when it stops
    [run_file] = (wandb_env / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (header.project, header.run_group, header.display_name) == ("jal-test", "bald", "run")
    assert nested(header.config.update)["seed"] == 3
    history = [nested(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    metrics = store.read_metrics(run)
    assert [row["labels"] for row in history] == [m["num_labeled"] for m in metrics]
    assert [row["test/accuracy"] for row in history] == pytest.approx([m["test_accuracy"] for m in metrics])
