"""Crash safety: the commit point, resume, the lock, signals, and what a failure leaves behind."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jal import experiment, loop, resources, store, workdir
from jal.cli import main
from jal.config import FilterConfig, ModelSpec, RunConfig
from jal.data import DataConfig
from jal.errors import JalError
from jal.train import TrainConfig
from tests.test_store import MODEL_SIZE, info

pytestmark = pytest.mark.slow
ARRAYS = (store.POOL_SCORES, store.TEST_SCORES, store.MODELS, store.POOL_INDICES)


def small_config(digits: Path, *, seed: int = 3, learning_rate: float = 5e-4, **loop_settings) -> RunConfig:
    """Four rounds of an MLP on 300 digits: seconds."""
    return RunConfig(
        data=DataConfig(path=str(digits), pool_size=300),
        model=ModelSpec("mlp", {"hidden_sizes": (32,)}),
        loop=loop.LoopConfig(mc_samples=4, train=TrainConfig(learning_rate=learning_rate), **loop_settings),
        initial=10,
        iterations=3,
        seed=seed,
    )


@pytest.fixture(scope="module")
def whole(digits, tmp_path_factory) -> Path:
    """The uninterrupted run of `small_config`, which the interrupted ones are compared with (read, never written)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    experiment.run(small_config(digits), out)
    return out


def same_run(a: Path, b: Path) -> None:
    """Every .npy bit for bit, every metrics line but its seconds."""
    for name in ARRAYS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    def lines(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / store.METRICS).open()]

    assert lines(a) == lines(b)


def interrupt_after(rounds: int):
    """An on_round that interrupts the run (as Ctrl-C would) once `rounds` rounds are on disk."""

    def on_round(metrics):
        if metrics["iteration"] + 1 == rounds:
            raise KeyboardInterrupt

    return on_round


def test_reopen_cuts_away_what_is_past_the_commit_point(tmp_path):
    run = tmp_path / "run"
    writer = store.RunWriter.create(
        run, {"record": {}}, pool_indices=np.arange(6), rounds=3, test_size=4, model_size=MODEL_SIZE
    )
    writer.append(info(0), 1.0)
    # A kill while round 1 was written: its rows are on disk, its metrics line is torn.
    writer.pool_scores.write(1, np.full(6, 7.0))
    writer.models.write(1, np.full(MODEL_SIZE, 7.0))
    writer.pool_scores.sync()
    writer.metrics.write('{"iteration": 1, "num_lab')
    writer.close()
    reopened = store.RunWriter.reopen(run, rounds=3, pool_size=6, test_size=4, model_size=MODEL_SIZE)
    assert reopened.round == 1
    assert (run / store.METRICS).read_text().count("\n") == 1 and (run / store.METRICS).read_text().endswith("\n")
    scores = np.load(run / store.POOL_SCORES)
    assert np.isfinite(scores[0]).all() and np.isnan(scores[1:]).all()
    assert np.isnan(np.load(run / store.MODELS)[1:]).all()
    reopened.append(info(1), 1.0)
    assert [m["iteration"] for m in store.read_metrics(run)] == [0, 1]
    reopened.close()
    with pytest.raises(JalError, match=r"not float32 \(3, 5\); the run cannot resume"):
        store.RunWriter.reopen(run, rounds=3, pool_size=5, test_size=4, model_size=MODEL_SIZE)


def test_an_interrupted_run_resumes_to_the_same_bytes(digits, whole, tmp_path):
    config = small_config(digits)
    with pytest.raises(JalError, match=r"interrupted; the 2 finished rounds are in .*jal run --resume"):
        experiment.run(config, tmp_path / "cut", on_round=interrupt_after(2))
    assert store.read_status(tmp_path / "cut") | {"time": None} == {"state": "interrupted", "rounds": 2, "time": None}
    assert len(store.read_metrics(tmp_path / "cut")) == 2
    started = []
    experiment.run(config, tmp_path / "cut", resume=True, on_start=lambda rounds, done: started.append((rounds, done)))
    assert started == [(4, 2)]
    same_run(whole, tmp_path / "cut")
    assert store.read_status(tmp_path / "cut")["state"] == "finished"
    # A finished run has nothing left to do, and says so without touching a file.
    before = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()}
    experiment.run(config, tmp_path / "cut", resume=True, on_start=lambda rounds, done: started.append((rounds, done)))
    assert started[-1] == (4, 4)
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()} == before
    # Its settings cannot change any more, not even with --force: a new run starts from them.
    for force in (False, True):
        with pytest.raises(JalError, match=r"is finished, .* jal run --config .*config\.json --out NEW_DIR"):
            experiment.run(small_config(digits, seed=9), tmp_path / "cut", resume=True, force=force)
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()} == before


def test_resume_refuses_other_settings_unless_forced(digits, tmp_path):
    config = small_config(digits)
    with pytest.raises(JalError):
        experiment.run(config, tmp_path / "run", on_round=interrupt_after(1))
    other = small_config(digits, seed=4)
    with pytest.raises(JalError, match=r"going on would change .*`seed`.*add --force"):
        experiment.run(other, tmp_path / "run", resume=True)
    saved = store.read_config(tmp_path / "run")
    saved["record"]["versions"]["jax"] = "0.0.1"
    store.write_json(tmp_path / "run" / store.CONFIG, saved)
    with pytest.raises(JalError, match="going on would change the jax version"):
        experiment.run(config, tmp_path / "run", resume=True)
    experiment.run(other, tmp_path / "run", resume=True, force=True)
    forced = store.read_config(tmp_path / "run")
    assert forced["seed"] == 4 and forced["resumed"][0]["round"] == 1
    assert forced["resumed"][0]["before"]["seed"] == 3
    assert len(store.read_metrics(tmp_path / "run")) == 4


def test_a_run_that_fails_before_its_first_round_leaves_nothing(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "run", interrupted)  # Ctrl-C during the first round
        with pytest.raises(JalError, match="interrupted; no round had finished"):
            experiment.run(small_config(digits), out)
    assert not out.exists()
    # The memory guard, before any work: the setting named, no directory left to block a retry.
    with pytest.raises(JalError, match=r"`chunk_size` needs [\d.]+ GiB of memory .* lower `chunk_size`"):
        experiment.run(small_config(digits, chunk_size=10**9), out)
    assert not out.exists()
    # An allocation XLA refuses (the guard bypassed to reach it) is one line too, and leaves nothing.
    monkeypatch.setattr(resources, "check_fits", lambda needs, **options: None)
    with pytest.raises(JalError, match=r"out of memory \(RESOURCE_EXHAUSTED"):
        experiment.run(small_config(digits, chunk_size=10**9), out)
    assert not out.exists()


def test_out_of_memory_names_the_settings_to_lower():
    import jax.numpy as jnp

    try:
        jnp.zeros((10**7, 10**6)).block_until_ready()
    except Exception as e:  # noqa: BLE001 - the real error XLA raises
        error = resources.out_of_memory(e)
    assert isinstance(error, JalError) and "\n" not in str(error) and "lower `chunk_size`" in str(error)
    assert resources.out_of_memory(ValueError("shapes")) is None


def test_divergence_stops_the_run_and_is_recorded(digits, tmp_path, capsys):
    config = small_config(digits, learning_rate=1e9)
    with pytest.raises(JalError, match=r"training diverged in round 0 .*lower `learning_rate`; recorded in"):
        experiment.run(config, tmp_path / "run")
    status = store.read_status(tmp_path / "run")
    assert status["state"] == "failed" and "diverged" in status["reason"]


def test_exploding_loss_counts_as_divergence():
    finite = info(0)._replace(train_loss=np.array([2.0, 300.0]))
    with pytest.raises(loop.Diverged, match=r"round 0 \(loss 300"):
        loop.check_trained(finite, num_classes=10)
    loop.check_trained(finite._replace(train_loss=np.array([2.3, 1.0])), num_classes=10)
    with pytest.raises(loop.Diverged, match="non-finite"):
        loop.check_trained(finite._replace(train_loss=np.array([np.nan])))


def test_a_second_writer_is_refused_before_it_reads_data(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with workdir.lock(out):
        # The data named does not exist: the lock must be what stops it.
        code = main(["run", "--data", str(tmp_path / "absent.npz"), "--out", str(out)])
        assert code == 2
        assert "another jal process is writing it" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_what_a_start_that_never_finished_left_is_taken_over(digits, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / store.STATUS).write_text('{"state": "running"}')
    (out / store.POOL_SCORES).write_bytes(b"\x93NUMPY half")
    assert main(["run", "--resume", str(out)]) == 2
    assert "never started" in capsys.readouterr().err
    experiment.run(small_config(digits), out)
    assert len(store.read_metrics(out)) == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(JalError, match="not an empty folder"):
        experiment.run(small_config(digits), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_an_interrupted_filter_resumes_to_the_same_evaluations(digits, tmp_path):
    config = FilterConfig(
        data=DataConfig(path=str(digits), pool_size=300),
        model=ModelSpec("mlp", {"hidden_sizes": (32,)}),
        initial=20,
        fractions=(0.0, 0.5, 0.7),
        mc_samples=4,
        train=TrainConfig(min_samples_per_epoch=500),
    )
    experiment.filter_pool(config, tmp_path / "whole")

    def stop(evaluation, seen=[]):  # noqa: B006 - counts calls
        seen.append(evaluation)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(JalError, match="interrupted; its 2 evaluations are in .*jal filter --resume"):
        experiment.filter_pool(config, tmp_path / "cut", on_result=stop)
    experiment.filter_pool(config, tmp_path / "cut", resume=True)
    assert store.read_filtering(tmp_path / "cut") == store.read_filtering(tmp_path / "whole")
    for name in (store.FILTER_SCORES, store.POOL_INDICES):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def jal_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jal.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def run_flags(digits: Path) -> list[str]:
    return ["--data", str(digits), "--pool-size", "300", "--model", "mlp", "--hidden-sizes", "32", "--initial", "10",
            "--iterations", "3", "--seed", "3", "--mc-samples", "4"]  # fmt: skip


def wait_for_rounds(run: Path, rounds: int, timeout: float = 300) -> None:
    start = time.monotonic()
    while not (run / store.METRICS).exists() or (run / store.METRICS).read_text().count("\n") < rounds:
        assert time.monotonic() - start < timeout, "the run made no progress"
        time.sleep(0.01)


def test_sigterm_keeps_the_finished_rounds_and_the_run_resumes(digits, whole, tmp_path):
    process = jal_process("run", *run_flags(digits), "--out", str(tmp_path / "cut"))
    wait_for_rounds(tmp_path / "cut", 1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("jal: error: interrupted; the ") and message.endswith(f"--resume {tmp_path / 'cut'}")
    assert store.read_status(tmp_path / "cut")["state"] == "interrupted"
    resumed = jal_process("run", "--resume", str(tmp_path / "cut"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    same_run(whole, tmp_path / "cut")
