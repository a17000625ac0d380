"""Every on-disk format of jal: the run directory, the filter directory and analysis.json.

A run directory, written as the run goes so an interrupted run keeps what it finished:

RUN_DIR/
  config.json        the run's settings (`jal.config.RunConfig`), and under "record" what
                     they resolved to: data source, pool, initial labels, backend, versions
  metrics.jsonl      one JSON object per iteration (see `metrics_record`)
  pool_indices.npy   int64 [P]: which training inputs form the pool
  pool_scores.npy    float32 [R, P]: the score of every pool sample at every round
  test_scores.npy    float32 [R, T]: the same for the test set (absent with --skip-test-scores)
  models.npy         float32 [R, D]: each round's trained parameters, flattened
                     (`read_model`), so that its scores can be recomputed, e.g. at another K
  analysis.json      written by `jal analyze`

R = iterations + 1 rounds (the last one trains and scores without acquiring). The score
files are plain `.npy` arrays (`numpy.load(path, mmap_mode="r")` reads them without jal);
rows of rounds that have not finished hold NaN.

A filter directory (`jal filter`) holds config.json, pool_indices.npy, filter_scores.npy
and filtering.jsonl, one evaluation per line.

This module imports numpy alone (and jax only to unflatten a model), so figures and
reports read runs without the training stack.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from jal.diagnostics import labeled_by_round
from jal.errors import JalError

CONFIG, METRICS = "config.json", "metrics.jsonl"
POOL_SCORES, TEST_SCORES, POOL_INDICES = "pool_scores.npy", "test_scores.npy", "pool_indices.npy"
MODELS = "models.npy"
FILTERING, FILTER_SCORES = "filtering.jsonl", "filter_scores.npy"
ANALYSIS = "analysis.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy")


def versions() -> dict:
    """Python's and the packages' versions, jal's own among them; in a clone, its commit ("-dirty" if changed)."""
    found = {"python": platform.python_version()}
    for name in ("jal", *PACKAGES):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["jal_commit"] = _commit(Path(__file__).resolve().parent.parent)
    return found


def _commit(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        git = functools.partial(subprocess.run, capture_output=True, text=True, check=True, timeout=10, cwd=root)
        commit = git(["git", "rev-parse", "HEAD"]).stdout.strip()
        changed = git(["git", "status", "--porcelain", "--untracked-files=no", "--", "jal"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if changed else "")


def metrics_record(info, seconds: float) -> dict:
    """One line of metrics.jsonl from a `jal.loop.StepInfo`."""
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


def check_new_directory(directory: str | os.PathLike) -> None:
    """Raises JalError unless `directory` is absent or an empty folder, in a writable place."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise JalError(f"{directory} exists and is not an empty folder; choose another `out` or remove it")
    parent = next(p for p in directory.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise JalError(f"{directory}: cannot create it under {parent}; choose a writable place")


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
        raise JalError(f"{directory}: cannot write it ({e}); free some space or choose another `out`") from e


def write_json(path: Path, obj) -> None:
    """Writes `obj` as JSON, atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {Path(path).parent} a {what}?") from e


class RunWriter:
    """Creates a run directory and appends one round at a time to it."""

    def __init__(self, run_dir: str | os.PathLike, config: dict, *, pool_indices, rounds: int, test_size: int,
                 model_size: int):  # fmt: skip
        check_new_directory(run_dir)
        self.run_dir = Path(run_dir)
        with new_directory(self.run_dir):
            write_json(self.run_dir / CONFIG, config)
            np.save(self.run_dir / POOL_INDICES, np.asarray(pool_indices))
            self.pool_scores = _nan_memmap(self.run_dir / POOL_SCORES, (rounds, len(pool_indices)))
            self.test_scores = _nan_memmap(self.run_dir / TEST_SCORES, (rounds, test_size)) if test_size else None
            self.models = _nan_memmap(self.run_dir / MODELS, (rounds, model_size))
            self.metrics = open(self.run_dir / METRICS, "a")
        self.round = 0

    def append(self, info, seconds: float) -> dict:
        """Writes one round's scores, model and metrics and flushes them to disk; returns the metrics."""
        from jax.flatten_util import ravel_pytree

        self.pool_scores[self.round] = np.asarray(info.pool_scores)
        self.pool_scores.flush()
        if self.test_scores is not None:
            self.test_scores[self.round] = np.asarray(info.test_scores)
            self.test_scores.flush()
        self.models[self.round] = np.asarray(ravel_pytree(info.params)[0])
        self.models.flush()
        record = metrics_record(info, seconds)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.round += 1
        return record

    def close(self) -> None:
        self.metrics.close()


def _nan_memmap(path: Path, shape: tuple[int, int]) -> np.memmap:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    array[:] = np.nan
    array.flush()
    return array


def read_config(directory: str | os.PathLike) -> dict:
    """The config.json of a run or filter directory: its settings, and what they resolved to under "record"."""
    path = Path(directory) / CONFIG
    config = read_json(path, "jal run or filter directory")
    if not isinstance(config, dict):
        raise JalError(f"{path}: not a JSON object; is {directory} a jal run directory?")
    if "record" not in config:
        raise JalError(f"{path}: written by an older jal (no 'record'); run it again with this version")
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


def read_pool_indices(directory: str | os.PathLike) -> np.ndarray:
    """The training-split index of each pool sample [P]."""
    path = Path(directory) / POOL_INDICES
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {directory} a jal run directory?") from e


def read_history(run_dir: str | os.PathLike) -> tuple[dict, list[dict], np.ndarray, np.ndarray]:
    """A run's config, its finished rounds' metrics, their pool scores [R, P] and labeled masks [R, P]."""
    config, metrics = read_config(run_dir), read_metrics(run_dir)
    if not metrics:
        raise JalError(f"{run_dir}: no finished round yet")
    history = np.asarray(read_scores(run_dir, "pool"))[: len(metrics)]
    labeled = labeled_by_round(history.shape[1], config["record"]["initial_indices"], [m["acquired"] for m in metrics])
    return config, metrics, history, labeled


def read_model(run_dir: str | os.PathLike, round_: int, template):
    """The parameters trained in round `round_` of a run, shaped like `template` (the model's fresh parameters)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    path = Path(run_dir) / MODELS
    try:
        models = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); runs before models were saved cannot be re-scored") from e
    flat, unflatten = ravel_pytree(template)
    if models.ndim != 2 or models.shape[1] != flat.size or not 0 <= round_ < len(models):
        raise JalError(f"{path}: holds {models.shape}, not round {round_} of {flat.size} parameters; is it corrupt?")
    row = np.asarray(models[round_])
    if np.isnan(row).any():
        raise JalError(f"{path}: round {round_} did not finish; choose an earlier round")
    return unflatten(jnp.asarray(row))


def is_filter_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / FILTERING).exists()


def append_filtering(filter_dir: str | os.PathLike, evaluation: dict) -> None:
    with (Path(filter_dir) / FILTERING).open("a") as f:
        f.write(json.dumps(evaluation) + "\n")


def read_filtering(filter_dir: str | os.PathLike) -> list[dict]:
    """The evaluations of a `jal filter` directory."""
    path = Path(filter_dir) / FILTERING
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {filter_dir} a jal filter directory?") from e


def write_analysis(run_dir: str | os.PathLike, result: dict) -> Path:
    path = Path(run_dir) / ANALYSIS
    write_json(path, result)
    return path


def read_analysis(run_dir: str | os.PathLike) -> dict | None:
    """The `jal analyze` result of a run, or None where it has none."""
    path = Path(run_dir) / ANALYSIS
    if not path.exists():
        return None
    analysis = read_json(path, "jal run directory")
    needed = ("rounds", "by_mc_samples", "recorded", "filter_fractions", "z")
    if not isinstance(analysis, dict) or any(key not in analysis for key in needed):
        raise JalError(f"{path}: not a jal analysis; run jal analyze again")
    return analysis
