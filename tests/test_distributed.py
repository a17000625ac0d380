"""Runs of several processes (`jal.distributed`): two CPU processes on this machine, joined through gloo.

Two processes write what one writes, bit for bit, and only process 0 writes; settings that
cannot start a run end every process at once with one line, and leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jal import store

pytestmark = pytest.mark.slow  # every test starts `jal run` processes
ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--model", "mlp", "--mc-samples", "4", "--epochs", "1", "--min-samples-per-epoch", "256",
         "--iterations", "2", "--acquire", "3", "--quiet"]  # fmt: skip
ARRAYS = ("pool_indices.npy", "pool_scores.npy", "test_scores.npy", "models.npy")
# What would let JAX find a cluster on a machine that runs the tests inside one.
CLUSTER_VARIABLES = ("SLURM_", "OMPI_", "PMI_", "KUBERNETES_", "JAX_COORDINATOR", "TPU_")


def environment() -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}, "JAX_PLATFORMS": "cpu"}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jal.cli", "run", *args], cwd=ROOT, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(port: int, process_id: int, count: int = 2, timeout: float = 120) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(process_id),
            "--distributed-timeout", str(timeout)]  # fmt: skip


def two_processes(flags: list[str], out0: Path, out1: Path) -> None:
    """`jal run` by processes 0 and 1 of a run, with their own `--out` or `--resume` directories."""
    port = free_port()
    processes = [start(*flags, *target, *launch(port, i)) for i, target in enumerate((out0, out1))]
    results = [finish(p) for p in processes]
    for i, (code, stderr) in enumerate(results):
        assert code == 0, f"process {i}: {stderr[-3000:]}"


def assert_same_run(a: Path, b: Path) -> None:
    """The same run but for where it ran: every array bit for bit, every metric but the time, every setting."""
    for name in ARRAYS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    metrics = [[{k: v for k, v in m.items() if k != "seconds"} for m in store.read_metrics(d)] for d in (a, b)]
    assert metrics[0] == metrics[1]
    configs = [store.read_config(d) for d in (a, b)]
    for config in configs:
        config.pop("resumed", None)  # a run resumed on other devices says so
        config["record"].pop("devices")
    assert configs[0] == configs[1]


@pytest.fixture(scope="module")
def alone(digits, tmp_path_factory) -> Path:
    """The run one process makes."""
    out = tmp_path_factory.mktemp("alone") / "run"
    code, stderr = finish(start("--data", str(digits), *SMALL, "--out", str(out)))
    assert code == 0, stderr[-3000:]
    return out


def test_two_processes_write_what_one_writes_and_only_process_0_writes(digits, alone, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "process-1"
    two_processes(["--data", str(digits), *SMALL], ["--out", str(out)], ["--out", str(elsewhere)])
    assert_same_run(alone, out)
    assert store.read_config(out)["record"]["devices"]["processes"] == 2
    assert not elsewhere.exists()  # process 1 computed every round, and wrote nothing


def test_two_processes_resume_a_run_from_its_finished_rounds(alone, tmp_path):
    interrupted = tmp_path / "run"
    shutil.copytree(alone, interrupted)
    metrics = interrupted / store.METRICS
    metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])  # killed after its first round
    two_processes(["--quiet"], ["--resume", str(interrupted)], ["--resume", str(interrupted)])
    assert_same_run(alone, interrupted)


def assert_refused(args: list[str], message: str, out: Path, timeout: float = 120) -> float:
    """`jal run` with `args` ends with one line naming `message`, exit 2, and nothing written; returns its seconds."""
    began = time.monotonic()
    code, stderr = finish(start(*args, "--out", str(out)), timeout=timeout)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("jal: error: "), stderr[-3000:]
    assert message in lines[0]
    assert not out.exists()
    return time.monotonic() - began


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
         "--process-id 2 lies outside 0..1 for 2 processes"),
        (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "1"], "give HOST:PORT"),
        (["--distributed"], "found no cluster"),
        (["--devices", "4096"], "--devices 4096: more than the"),
    ],
)  # fmt: skip
def test_settings_that_cannot_start_a_run_are_refused_on_one_line(digits, tmp_path, flags, message):
    assert_refused(["--data", str(digits), *SMALL, *flags], message, tmp_path / "run")


def test_a_coordinator_nobody_runs_ends_the_process_after_the_timeout(digits, tmp_path):
    seconds = assert_refused(["--data", str(digits), *SMALL, *launch(free_port(), 1, timeout=5)],
                             "no coordinator answered at", tmp_path / "run")  # fmt: skip
    assert 5 <= seconds < 60


def test_process_0_ends_when_the_others_never_come(digits, tmp_path):
    seconds = assert_refused(["--data", str(digits), *SMALL, *launch(free_port(), 0, count=3, timeout=3)],
                             "processes 1, 2 of 3 did not join within 3 s", tmp_path / "run")  # fmt: skip
    assert 3 <= seconds < 60


def test_a_process_that_cannot_take_the_directory_stops_the_others(digits, tmp_path):
    """Process 0 refuses an `--out` that is not empty; process 1, which does not write, stops with it."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    port = free_port()
    flags = ["--data", str(digits), *SMALL]
    processes = [start(*flags, "--out", str(taken), *launch(port, i)) for i in range(2)]
    (code0, stderr0), (code1, stderr1) = (finish(p) for p in processes)
    assert code0 == 2 and "is not an empty folder" in stderr0, stderr0[-3000:]
    assert code1 == 2 and "jal: error: process 0 of the run failed" in stderr1, stderr1[-3000:]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_processes_started_with_other_settings_stop_before_the_first_round(digits, tmp_path):
    port = free_port()
    flags = ["--data", str(digits), *SMALL]
    out = tmp_path / "run"
    processes = [
        start(*flags, *seed, "--out", str(out), *launch(port, i)) for i, seed in enumerate(([], ["--seed", "1"]))
    ]
    for code, stderr in (finish(p) for p in processes):
        assert code == 2 and "jal: error: process 1: its settings, data or versions differ" in stderr, stderr[-3000:]
    assert not out.exists()
