"""The run directory, written as the run goes so an interrupted run keeps what it finished.

RUN_DIR/
  config.json        every setting, the initial labeled set and the package versions
  metrics.jsonl      one JSON object per iteration (see `StepInfo` and `metrics_record`)
  pool_indices.npy   int64 [P]: which training-set images form the pool
  pool_scores.npy    float32 [R, P]: the score of every pool sample at every round
  test_scores.npy    float32 [R, T]: the same for the test set (absent with --skip-test-scores)
  models.npy         float32 [R, D]: each round's trained LeNet parameters, flattened
                     (`read_model`), so that its scores can be recomputed, e.g. at another K

R = iterations + 1 rounds (the last one trains and scores without acquiring). The score
files are plain `.npy` arrays (`numpy.load(path, mmap_mode="r")` reads them without jal);
rows of rounds that have not finished hold NaN.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from jal.errors import JalError
from jal.model import init_params

CONFIG, METRICS = "config.json", "metrics.jsonl"
POOL_SCORES, TEST_SCORES, POOL_INDICES = "pool_scores.npy", "test_scores.npy", "pool_indices.npy"
MODELS = "models.npy"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def metrics_record(info, seconds: float) -> dict:
    """One line of metrics.jsonl from a StepInfo."""
    pool_scores = np.asarray(info.pool_scores)
    return {
        "iteration": int(info.iteration),
        "num_labeled": int(info.num_labeled),
        "test_accuracy": float(info.test_accuracy),
        "test_nll": float(info.test_nll),
        "train_loss": [float(x) for x in np.asarray(info.train_loss)],
        "acquired": [int(i) for i in np.asarray(info.acquired)],
        "acquired_scores": [float(s) for s in np.asarray(info.acquired_scores)],
        "mean_pool_score": float(pool_scores.mean()),
        "max_pool_score": float(pool_scores.max()),
        "seconds": seconds,
    }


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Raises JalError unless `run_dir` is absent or an empty folder, in a writable place."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise JalError(f"{run_dir} exists and is not an empty folder; choose another --out or remove it")
    parent = next(p for p in run_dir.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise JalError(f"{run_dir}: cannot create it under {parent}; choose a writable place")


@contextlib.contextmanager
def new_directory(directory: Path):
    """Creates `directory` (absent or empty) for the files written inside the block.

    If writing fails, nothing half-made is left behind: the files are removed, and the
    directory too if this created it; the error becomes a one-line JalError.
    """
    existed = directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
    except OSError as e:
        for path in directory.iterdir() if directory.is_dir() else ():
            path.unlink()
        if not existed and directory.is_dir():
            directory.rmdir()
        raise JalError(f"{directory}: cannot write it ({e}); free some space or choose another --out") from e


class RunWriter:
    """Creates a run directory and appends one round at a time to it."""

    def __init__(self, run_dir: str | os.PathLike, config: dict, *, pool_indices, rounds: int, test_size: int):
        check_run_dir(run_dir)
        self.run_dir = Path(run_dir)
        with new_directory(self.run_dir):
            write_json(self.run_dir / CONFIG, {**config, "versions": versions()})
            np.save(self.run_dir / POOL_INDICES, np.asarray(pool_indices))
            self.pool_scores = _nan_memmap(self.run_dir / POOL_SCORES, (rounds, len(pool_indices)))
            self.test_scores = _nan_memmap(self.run_dir / TEST_SCORES, (rounds, test_size)) if test_size else None
            self.models = _nan_memmap(self.run_dir / MODELS, (rounds, _layout()[0]))
            self.metrics = open(self.run_dir / METRICS, "a")
        self.round = 0

    def append(self, info, seconds: float) -> dict:
        """Writes one round's scores and metrics and flushes them to disk; returns the metrics."""
        self.pool_scores[self.round] = np.asarray(info.pool_scores)
        self.pool_scores.flush()
        if self.test_scores is not None:
            self.test_scores[self.round] = np.asarray(info.test_scores)
            self.test_scores.flush()
        self.models[self.round] = _flatten(info.params)
        self.models.flush()
        record = metrics_record(info, seconds)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.round += 1
        return record

    def close(self) -> None:
        self.metrics.close()


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _nan_memmap(path: Path, shape: tuple[int, int]) -> np.memmap:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    array[:] = np.nan
    array.flush()
    return array


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {run_dir} a jal run directory?") from e
    if not isinstance(config, dict):
        raise JalError(f"{path}: not a JSON object; is {run_dir} a jal run directory?")
    return config


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The finished rounds of a run; a last line cut short by an interruption is skipped."""
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError as e:
        raise JalError(f"{path}: cannot read ({e}); is {run_dir} a jal run directory?") from e
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                break
            raise JalError(f"{path}:{number}: not JSON ({e}); the file is corrupt") from e
    return records


def read_scores(run_dir: str | os.PathLike, split: str = "pool") -> np.ndarray:
    """Score history [R, N] of the pool or test set (NaN rows: rounds not finished)."""
    path = Path(run_dir) / {"pool": POOL_SCORES, "test": TEST_SCORES}[split]
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); the run has no {split} scores or the file is corrupt") from e


@functools.cache
def _layout():
    """(number of LeNet parameters, the function that unflattens a row of models.npy)."""
    flat, unflatten = ravel_pytree(init_params(jax.random.key(0)))
    return flat.size, unflatten


def read_pool_indices(run_dir: str | os.PathLike) -> np.ndarray:
    """The training-set index of each pool sample [P]."""
    path = Path(run_dir) / POOL_INDICES
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {run_dir} a jal run directory?") from e


def _flatten(params) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def read_model(run_dir: str | os.PathLike, round_: int) -> dict:
    """The LeNet parameters trained in round `round_` of a run."""
    path = Path(run_dir) / MODELS
    try:
        models = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); runs before models were saved cannot be re-scored") from e
    size, unflatten = _layout()
    if models.ndim != 2 or models.shape[1] != size or not 0 <= round_ < len(models):
        raise JalError(f"{path}: holds {models.shape}, not round {round_} of {size} parameters; is it corrupt?")
    row = np.asarray(models[round_])
    if np.isnan(row).any():
        raise JalError(f"{path}: round {round_} did not finish; choose an earlier round")
    return unflatten(jax.numpy.asarray(row))
