"""The kill test: a run killed with SIGKILL at random moments, then resumed, ends as an uninterrupted one.

CI kills a few runs (`JAL_KILLS`, default 3); the full count runs as a script:

    .venv/bin/python -m tests.test_kill --kills 50

Each kill lands at a random moment: during start-up (imports, data, compilation, the
files' creation) or inside a random round, at a random fraction of a round's length, so
that it falls in training, scoring or the writing of the round. The killed directory is
then resumed (or, where it never started, started again with the same flags) and
compared with the uninterrupted run: every .npy bit for bit, every metrics line but its
seconds.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from jal import store

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 7


def make_digits(path: Path) -> Path:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    np.savez(path, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    return path


def flags(digits: Path) -> list[str]:
    return ["--data", str(digits), "--pool-size", "1000", "--model", "mlp", "--hidden-sizes", "64", "--initial", "10",
            "--acquire", "5", "--iterations", str(ROUNDS - 1), "--mc-samples", "16", "--seed", "7"]  # fmt: skip


def jal(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jal.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise AssertionError(f"jal exited {process.returncode}: {err.strip()[-500:]}")


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def where_it_landed(run: Path) -> str:
    """What a kill interrupted, as the directory shows it."""
    if not (run / store.CONFIG).exists():
        return "start-up"
    done = lines(run / store.METRICS)
    if done == ROUNDS:
        return "after the last round"
    written = not np.isnan(np.load(run / store.POOL_SCORES, mmap_mode="r")[done]).all()
    return f"round {done}: " + ("written, not committed" if written else "training or scoring")


def same_run(a: Path, b: Path) -> list[str]:
    """The files in which two runs differ (metrics: but for seconds)."""
    differ = [n for n in (store.POOL_SCORES, store.TEST_SCORES, store.MODELS, store.POOL_INDICES)
              if (a / n).read_bytes() != (b / n).read_bytes()]  # fmt: skip

    def metrics(run):
        return [{k: v for k, v in m.items() if k != "seconds"} for m in store.read_metrics(run)]

    if metrics(a) != metrics(b):
        differ.append(store.METRICS)
    return differ


def kill_and_resume(kills: int, seed: int, workdir: Path, log=print) -> collections.Counter:
    """Kills `kills` runs at random moments, resumes each, compares; returns where the kills landed."""
    rng = random.Random(seed)
    digits = make_digits(workdir / "digits.npz")
    reference = workdir / "reference"
    start = time.monotonic()
    process = jal("run", *flags(digits), "--out", str(reference))
    while not (reference / store.CONFIG).exists() and process.poll() is None:
        time.sleep(0.005)
    startup = time.monotonic() - start
    finish(process)
    seconds = [m["seconds"] for m in store.read_metrics(reference)]  # each round's length
    landed = collections.Counter()
    trial = 0
    while trial < kills:
        run = workdir / f"killed-{trial}"
        process = jal("run", *flags(digits), "--out", str(run))
        if rng.random() < 0.2:  # during start-up
            time.sleep(rng.uniform(0, startup))
        else:
            target = rng.randrange(ROUNDS)
            while lines(run / store.METRICS) < target and process.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, seconds[target]))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode != -signal.SIGKILL:  # it had ended: no kill to resume from, draw again
            shutil.rmtree(run)
            continue
        trial += 1
        where = where_it_landed(run)
        landed[where.split(": ")[-1]] += 1  # start-up, training or scoring, written, after the last round
        if (run / store.CONFIG).exists():
            finish(jal("run", "--resume", str(run)))
        else:
            finish(jal("run", *flags(digits), "--out", str(run)))
        differ = same_run(reference, run)
        log(f"kill {trial}/{kills}: {where}; resumed: {'identical' if not differ else 'DIFFERS in ' + str(differ)}")
        assert not differ, f"kill {trial} ({where}): the resumed run differs in {differ}"
        shutil.rmtree(run)
    return landed


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_run(tmp_path):
    landed = kill_and_resume(int(os.environ.get("JAL_KILLS", "3")), seed=0, workdir=tmp_path, log=lambda line: None)
    assert sum(landed.values()) == int(os.environ.get("JAL_KILLS", "3"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        began = time.monotonic()
        landed = kill_and_resume(args.kills, args.seed, Path(directory))
        print(f"{args.kills} kills, all resumed identical, in {time.monotonic() - began:.0f} s; landed: {dict(landed)}")
