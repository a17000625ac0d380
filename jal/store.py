"""Every on-disk format of jal: the run directory, the filter directory and analysis.json.

A run directory, written as the run goes so an interrupted run keeps what it finished:

RUN_DIR/
  config.json        the run's settings (`jal.config.RunConfig`), and under "record" what
                     they resolved to: data source, pool, initial labels, backend, versions
  metrics.jsonl      one JSON object per iteration (see `metrics_record`)
  pool_indices.npy   int64 [P]: which training inputs form the pool
  pool_scores.npy    float32 [R, P]: the score of every pool sample at every round (float16
                     where the run says so: `HISTORY_DTYPES`)
  test_scores.npy    float32 [R, T]: the same for the test set (absent with --skip-test-scores)
  models.npy         float32 [R, D]: each round's trained parameters, flattened
                     (`read_model`), so that its scores can be recomputed, e.g. at another K
  analysis.json      written by `jal analyze`

  status.json        "running", "finished", "interrupted" or "failed" (with the reason)

R = iterations + 1 rounds (the last one trains and scores without acquiring). The score
files are plain `.npy` arrays (`numpy.load(path, mmap_mode="r")` reads them without jal);
rows of rounds that have not finished hold NaN.

metrics.jsonl is the commit point: a round has finished once its line is whole. Its rows
are written first, and whatever lies past the last whole line is redone on resume
(`RunWriter.reopen`), so a directory killed at any moment reads as its finished rounds.
config.json is written last when a run is created; without it, a run never started.

A filter directory (`jal filter`) holds config.json, pool_indices.npy, filter_scores.npy
and filtering.jsonl, one evaluation per line (its commit point), and status.json.

This module imports numpy alone (and jax only to unflatten a model), so figures and
reports read runs without the training stack.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
import tokenize
import warnings
from pathlib import Path

import numpy as np

from jal.diagnostics import labeled_by_round
from jal.errors import JalError
from jal.workdir import TEMPORARY

CONFIG, METRICS = "config.json", "metrics.jsonl"
POOL_SCORES, TEST_SCORES, POOL_INDICES = "pool_scores.npy", "test_scores.npy", "pool_indices.npy"
MODELS = "models.npy"
FILTERING, FILTER_SCORES = "filtering.jsonl", "filter_scores.npy"
ANALYSIS = "analysis.json"
STATUS = "status.json"  # how the run ended, or that it runs (`write_status`)
# pool_scores.npy's dtypes: float16 halves a large pool's history and keeps about 3 significant digits
HISTORY_DTYPES = ("float32", "float16")
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


def write_json(path: Path, obj) -> None:
    """Writes `obj` as JSON, atomically: a reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMPORARY}")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def unstarted(directory: Path) -> bool:
    """Whether `directory` holds only what a run or filter that never started left (no config.json yet)."""
    names = {METRICS, POOL_SCORES, TEST_SCORES, POOL_INDICES, MODELS, FILTERING, FILTER_SCORES, STATUS}
    return all(path.name in names or path.name.endswith(TEMPORARY) for path in directory.iterdir())


def write_status(directory: str | os.PathLike, state: str, **facts) -> None:
    """status.json: "running", "finished", "interrupted" or "failed" (with a "reason"), and when."""
    write_json(Path(directory) / STATUS, {"state": state, **facts, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_status(directory: str | os.PathLike) -> dict:
    """What status.json records, {"state": "unknown"} where it has nothing readable."""
    try:
        status = json.loads((Path(directory) / STATUS).read_text())
    except (OSError, ValueError):
        return {"state": "unknown"}
    return status if isinstance(status, dict) and isinstance(status.get("state"), str) else {"state": "unknown"}


def read_json(path: Path, what: str):
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
        return json.loads(text)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python's stack
        raise JalError(f"{path}: cannot read ({e}); is {path.parent} a {what}?") from e


class RunWriter:
    """Appends one round at a time to a run directory.

    metrics.jsonl is the commit point: a round is finished once its line is whole on disk.
    Its scores and model rows are written and synced before the line, and `reopen` resets
    every row past the last finished round, so after a kill at any moment the directory
    reads as its finished rounds, and a resumed run writes the same bytes.
    """

    def __init__(self, run_dir: Path, pool_scores: RowFile, test_scores: RowFile | None, models: RowFile,
                 committed: int):  # fmt: skip
        self.run_dir, self.round = run_dir, committed
        self.pool_scores, self.test_scores, self.models = pool_scores, test_scores, models
        self.metrics = open(run_dir / METRICS, "a")

    @classmethod
    def create(cls, run_dir: str | os.PathLike, config: dict, *, pool_indices, rounds: int, test_size: int,
               model_size: int, history_dtype: str = "float32") -> RunWriter:  # fmt: skip
        """Writes a new run's files into `run_dir`, config.json last: from then on the run exists.

        `history_dtype` is pool_scores.npy's (`HISTORY_DTYPES`); the other arrays are float32.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        np.save(run_dir / POOL_INDICES, np.asarray(pool_indices))
        pool_scores = RowFile.create(run_dir / POOL_SCORES, (rounds, len(pool_indices)), history_dtype)
        test_scores = RowFile.create(run_dir / TEST_SCORES, (rounds, test_size)) if test_size else None
        writer = cls(run_dir, pool_scores, test_scores, RowFile.create(run_dir / MODELS, (rounds, model_size)), 0)
        writer.reset_unfinished()
        write_status(run_dir, "running")
        write_json(run_dir / CONFIG, config)
        return writer

    @classmethod
    def reopen(cls, run_dir: str | os.PathLike, *, rounds: int, pool_size: int, test_size: int,
               model_size: int, history_dtype: str = "float32") -> RunWriter:  # fmt: skip
        """A run directory's writer after its last finished round; anything past it is cut away."""
        run_dir = Path(run_dir)
        committed = committed_rounds(run_dir)
        if committed > rounds:
            raise JalError(f"{run_dir / METRICS}: {committed} rounds, more than the run's {rounds}; is it corrupt?")
        pool_scores = RowFile.reopen(run_dir / POOL_SCORES, (rounds, pool_size), history_dtype)
        test_scores = RowFile.reopen(run_dir / TEST_SCORES, (rounds, test_size)) if test_size else None
        models = RowFile.reopen(run_dir / MODELS, (rounds, model_size))
        writer = cls(run_dir, pool_scores, test_scores, models, committed)
        writer.reset_unfinished()
        return writer

    def _files(self) -> list[RowFile]:
        return [a for a in (self.pool_scores, self.test_scores, self.models) if a is not None]

    def reset_unfinished(self) -> None:
        """NaN in every row from the next round on: nothing a killed round wrote is kept."""
        for rows in self._files():
            rows.reset_from(self.round)
            rows.sync()

    def append(self, info, seconds: float) -> dict:
        """Writes one round's scores and model, then commits the round with its metrics line; returns the metrics."""
        from jax.flatten_util import ravel_pytree

        self.pool_scores.write(self.round, np.asarray(info.pool_scores))
        if self.test_scores is not None:
            self.test_scores.write(self.round, np.asarray(info.test_scores))
        self.models.write(self.round, np.asarray(ravel_pytree(info.params)[0]))
        for rows in self._files():
            rows.sync()
        record = metrics_record(info, seconds)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        os.fsync(self.metrics.fileno())
        self.round += 1
        return record

    def close(self) -> None:
        self.metrics.close()
        for rows in self._files():
            rows.close()


class RowFile:
    """A [rounds, N] .npy array of a run written one row at a time through the file.

    Not through a memory map: every page of a mapped row written stays in the process's
    resident memory, so a pool of 10^7 would add 40 MB each round, and resetting the rows
    would map the whole file. Written with file writes, the rows go to the page cache, which
    the kernel writes out and frees, and the process holds one row at a time.
    """

    def __init__(self, path: Path, shape: tuple[int, int], dtype, offset: int):
        self.path, self.shape, self.dtype, self.offset = path, shape, np.dtype(dtype), offset
        self.file = open(path, "r+b")

    @classmethod
    def create(cls, path: Path, shape: tuple[int, int], dtype="float32") -> RowFile:
        """A new file of `shape` rows (its contents undefined until written: `reset_from(0)`)."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.truncate(offset + math.prod(shape) * dtype.itemsize)
        return cls(path, shape, dtype, offset)

    @classmethod
    def reopen(cls, path: Path, shape: tuple[int, int], dtype="float32") -> RowFile:
        """The file a run made, after checking it is: of `dtype` and `shape`."""
        try:
            array = np.lib.format.open_memmap(path, mode="r")  # maps the file, reads only its header
        except (OSError, ValueError) as e:
            raise JalError(f"{path}: cannot open it ({e}); the run cannot resume, start it again") from e
        if array.shape != shape or array.dtype != np.dtype(dtype):
            raise JalError(f"{path}: holds {array.dtype} {array.shape}, not {dtype} {shape}; the run cannot resume")
        return cls(path, shape, dtype, array.offset)

    def write(self, round_: int, row: np.ndarray) -> None:
        values = np.ascontiguousarray(row, self.dtype)
        if values.shape != self.shape[1:]:
            raise ValueError(f"{self.path}: a row of {values.shape}, not {self.shape[1:]}")
        if np.isinf(values).any() and not np.isinf(row).any():
            raise JalError(f"{self.path}: a score of {np.abs(row).max():.3g} exceeds {self.dtype}'s range; "
                           "use `history_dtype` float32")  # fmt: skip
        self.file.seek(self.offset + round_ * values.nbytes)
        self.file.write(values.tobytes())

    def reset_from(self, round_: int) -> None:
        """NaN in the rows from `round_` on."""
        nan = np.full(self.shape[1], np.nan, self.dtype)
        for later in range(round_, self.shape[0]):
            self.write(later, nan)

    def sync(self) -> None:
        """What was written is on disk (a kill after this keeps it)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def committed_rounds(run_dir: str | os.PathLike, name: str = METRICS) -> int:
    """The whole lines of a run's metrics.jsonl (or a filter's filtering.jsonl); a line a kill cut short is cut away."""
    path = Path(run_dir) / name
    try:
        data = path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with path.open("r+b") as f:
                f.truncate(len(whole))
    except OSError as e:
        raise JalError(f"{path}: cannot read ({e.strerror}); it cannot resume, start it again") from e
    return whole.count(b"\n")


def read_config(directory: str | os.PathLike) -> dict:
    """The config.json of a run or filter directory: its settings, and what they resolved to under "record"."""
    path = Path(directory) / CONFIG
    config = read_json(path, "jal run or filter directory")
    if not isinstance(config, dict) or not {"data", "model", "loop", "record"} & config.keys():
        raise JalError(f"{path}: not a jal config.json; is {directory} a jal run or filter directory?")
    if "record" not in config:
        raise JalError(f"{path}: written by an older jal (no 'record'); run it again with this version")
    if not isinstance(config["record"], dict):
        raise JalError(f"{path}: its 'record' is not an object; {_damaged(directory)}")
    return config


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The finished rounds of a run; a last line cut short by an interruption is skipped."""
    return _read_jsonl(Path(run_dir) / METRICS, "jal run directory")


def read_scores(run_dir: str | os.PathLike, split: str = "pool") -> np.ndarray:
    """Score history [R, N] of the pool or test set (NaN rows: rounds not finished), memory-mapped.

    float32, or float16 where the run was told so (`HISTORY_DTYPES`).
    """
    path = Path(run_dir) / {"pool": POOL_SCORES, "test": TEST_SCORES}[split]
    return read_npy(path, HISTORY_DTYPES, 2, f"the run has no {split} scores or the file is corrupt")


def read_pool_indices(directory: str | os.PathLike) -> np.ndarray:
    """The training-split index of each pool sample [P]."""
    path = Path(directory) / POOL_INDICES
    indices = np.array(read_npy(path, np.integer, 1, f"is {directory} a jal run or filter directory?"))
    if (indices < 0).any():
        raise JalError(f"{path}: negative indices; {_damaged(directory)}")
    return indices


def read_history(run_dir: str | os.PathLike) -> tuple[dict, list[dict], np.ndarray, np.ndarray]:
    """A run's config, its finished rounds' metrics, their pool scores [R, P] and labeled masks [R, P]."""
    config, metrics = read_config(run_dir), read_metrics(run_dir)
    if not metrics:
        raise JalError(f"{run_dir}: no finished round yet; wait for one")
    run_dir = Path(run_dir)
    history = np.asarray(_finished(read_scores(run_dir, "pool"), len(metrics), run_dir / POOL_SCORES), np.float32)
    pool_size = history.shape[1]
    where = f"{run_dir / CONFIG}: 'record.initial_indices'"
    initial = _pool_indices(config["record"].get("initial_indices"), pool_size, where)
    acquired = [
        _pool_indices(m.get("acquired"), pool_size, f"{run_dir / METRICS}:{number}: 'acquired'")
        for number, m in enumerate(metrics, 1)
    ]
    return config, metrics, history, labeled_by_round(pool_size, initial, acquired)


def read_model(run_dir: str | os.PathLike, round_: int, template):
    """The parameters trained in round `round_` of a run, shaped like `template` (the model's fresh parameters)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    path = Path(run_dir) / MODELS
    models = read_npy(path, np.float32, 2, "runs before models were saved cannot be re-scored")
    flat, unflatten = ravel_pytree(template)
    if models.ndim != 2 or models.shape[1] != flat.size or not 0 <= round_ < len(models):
        raise JalError(f"{path}: holds {models.shape}, not round {round_} of {flat.size} parameters; is it corrupt?")
    row = np.asarray(models[round_], np.float32)  # in this machine's byte order, as jax needs it
    if np.isnan(row).any():
        raise JalError(f"{path}: round {round_} did not finish; choose an earlier round")
    return unflatten(jnp.asarray(row))


def is_filter_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / FILTERING).exists()


def append_filtering(filter_dir: str | os.PathLike, evaluation: dict) -> None:
    """Commits one evaluation: a filter's filtering.jsonl is its commit point, as metrics.jsonl is a run's."""
    with (Path(filter_dir) / FILTERING).open("a") as f:
        f.write(json.dumps(evaluation) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_filter_scores(filter_dir: str | os.PathLike, pool_size: int) -> np.ndarray:
    """The [P] scores a filter ranked its pool by."""
    path = Path(filter_dir) / FILTER_SCORES
    scores = np.asarray(read_npy(path, np.float32, 1, "start the filter again"))
    if scores.shape != (pool_size,) or not np.isfinite(scores).all():
        raise JalError(f"{path}: holds {scores.dtype} {scores.shape}, not {pool_size} finite scores; start it again")
    return scores


def read_filtering(filter_dir: str | os.PathLike) -> list[dict]:
    """The finished evaluations of a `jal filter` directory; a last line cut short by an interruption is skipped."""
    return _read_jsonl(Path(filter_dir) / FILTERING, "jal filter directory")


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
    problem = _mismatch(analysis, ANALYSIS_FORM) or _analysis_lengths(analysis)
    if problem:
        raise JalError(f"{path}: {problem}, not a jal analysis; run jal analyze again")
    return analysis


# Checks of a whole directory --------------------------------------------------------------------------------
# A command reads a run or filter directory only after `check_directory` found nothing wrong
# in it: a damaged one is refused with a one-line JalError before anything is drawn or
# written. A form is what the commands read of a JSON value: an object's keys with the form
# of each value (`Maybe` where older files lack the key), [form] a list of them, and at the
# leaves a type or a `Between`; int never admits true or false, float any number a float holds.


class Between:
    """A number from `low` to `high`, or NaN where `nan` (a rank correlation of constant scores)."""

    def __init__(self, low: float, high: float, *, nan: bool = False):
        self.low, self.high, self.nan = low, high, nan

    def admits(self, value) -> bool:
        rounding = 1e-9  # a correlation computed in floating point may pass 1 by a hair
        inside = _is_number(value) and self.low - rounding <= value <= self.high + rounding
        return inside or (self.nan and isinstance(value, float) and math.isnan(value))

    def __str__(self) -> str:
        return f"a number from {self.low} to {self.high}" + (" or NaN" if self.nan else "")


class Maybe:
    """The form of a key that files written by older versions lack."""

    def __init__(self, form):
        self.form = form


FRACTION, CORRELATION = Between(0, 1), Between(-1, 1, nan=True)
_SETTINGS_FORM = {"data": dict, "model": {"name": str}}
RUN_CONFIG_FORM = {
    **_SETTINGS_FORM,
    "loop": {"acquisition": str, "acquire": int, "mc_samples": int, "score_test": bool},
    "iterations": int,
    "seed": int,
    "record": {
        "pool_size": int,
        "filtered_pool_size": int,
        "initial_indices": [int],
        "score_name": str,
        "num_classes": int,
    },
}
FILTER_CONFIG_FORM = {**_SETTINGS_FORM, "estimator": str, "record": {"pool_size": int}}
METRICS_FORM = {
    "iteration": int,
    "num_labeled": int,
    "test_accuracy": FRACTION,
    "test_nll": float,
    "train_loss": [float],
    "acquired": [int],
    "acquired_scores": [float],
    "mean_pool_score": float,
    "max_pool_score": float,
    "seconds": float,
}
EVALUATION_FORM = {"fraction": FRACTION, "removal": str, "num_kept": int, "test_accuracy": FRACTION, "test_nll": float}
REMOVALS = ("lowest", "random")
ANALYSIS_FORM = {
    "rounds": [int],
    "by_mc_samples": dict,
    "z": float,
    "subset_size": int,
    "repeats": int,
    "run_mc_samples": int,
    "filter_fractions": [FRACTION],
    "recorded": {"rank_correlation": [CORRELATION], "filter_regret": [FRACTION]},
    "retrained": Maybe(bool),
}
ANALYSIS_ENTRY_FORM = {  # one per K in "by_mc_samples"
    "median_noise_sd": float,
    "median_score": float,
    "rise_fraction": [FRACTION],
    "rank_correlation": [CORRELATION],
    "filter_regret": [FRACTION],
    "fall_fraction": Maybe([FRACTION]),
    "rise_since_start": Maybe([FRACTION]),
    "fall_since_start": Maybe([FRACTION]),
    "retrain_rise_fraction": Maybe([FRACTION]),
    "retrain_rank_correlation": Maybe([CORRELATION]),
}
# Curves the figures draw together: the second is read wherever the first is found.
ANALYSIS_PAIRS = (("rise_since_start", "fall_since_start"), ("retrain_rise_fraction", "retrain_rank_correlation"))
_KINDS = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "text",
          list: "a list", dict: "an object"}  # fmt: skip
FLOAT_MAX = float(np.finfo(np.float64).max)
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# What numpy raises for a damaged .npy header, which it parses as a Python literal.
NPY_ERRORS = (OSError, ValueError, EOFError, SyntaxError, RecursionError, tokenize.TokenError)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A JSON number a float can hold (JSON's integers may have hundreds of digits); true and false are none."""
    return isinstance(value, float) or (_is_int(value) and abs(value) <= FLOAT_MAX)


def _kind(value) -> str:
    if _is_int(value) and not _is_number(value):
        return "an integer too large for a number"
    return _KINDS.get(type(value), type(value).__name__)


def _mismatch(value, form, name: str = "") -> str | None:
    """How `value` departs from `form`, None where it does not; `name` is the dotted key where it lies."""
    where = f"'{name}'" if name else "the file"
    if isinstance(form, dict):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, not an object"
        for key, inner in form.items():
            place = f"{name}.{key}" if name else key
            if key not in value:
                if not isinstance(inner, Maybe):
                    return f"no '{place}'"
            elif problem := _mismatch(value[key], inner.form if isinstance(inner, Maybe) else inner, place):
                return problem
        return None
    if isinstance(form, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        return next((p for i, v in enumerate(value) if (p := _mismatch(v, form[0], f"{name}[{i}]"))), None)
    if isinstance(form, Between):
        return None if form.admits(value) else f"{where} is {value!r:.30}, not {form}"
    if form is float:
        fits = _is_number(value)
    elif form is int:
        fits = _is_int(value)
    else:
        fits = isinstance(value, form)
    return None if fits else f"{where} is {_kind(value)}, not {_KINDS[form]}"


def _check_form(value, form, where: str, fix: str) -> None:
    problem = _mismatch(value, form)
    if problem:
        raise JalError(f"{where}: {problem}; {fix}")


def _analysis_lengths(analysis: dict) -> str | None:
    """What in a well-formed analysis has the wrong length: each curve has one value per round or fraction."""
    rounds, fractions, recorded = analysis["rounds"], analysis["filter_fractions"], analysis["recorded"]
    if not rounds or min(rounds) < 0 or max(rounds) >= len(recorded["rank_correlation"]):
        return "its 'rounds' are not rounds of 'recorded.rank_correlation'"
    if len(recorded["filter_regret"]) != len(fractions):
        return "'recorded.filter_regret' has not one value per filter fraction"
    lengths = {"rise_fraction": len(rounds) - 1, "fall_fraction": len(rounds) - 1, "filter_regret": len(fractions)}
    for k, entry in analysis["by_mc_samples"].items():
        if problem := _mismatch(entry, ANALYSIS_ENTRY_FORM, f"by_mc_samples.{k}"):
            return problem
        if any((first in entry) != (second in entry) for first, second in ANALYSIS_PAIRS):
            return f"'by_mc_samples.{k}' lacks one of the curves {ANALYSIS_PAIRS}"
        for name, form in ANALYSIS_ENTRY_FORM.items():
            expected = lengths.get(name, len(rounds))  # the other curves have a value per round
            if name in entry and form is not float and len(entry[name]) != expected:
                return f"'by_mc_samples.{k}.{name}' has {len(entry[name])} values, not {expected}"
    return None


def _damaged(directory: str | os.PathLike) -> str:
    """What to do about a damaged file of a run or filter directory."""
    command = "jal filter" if is_filter_dir(directory) else "jal run"
    return f"the file is corrupt or not jal's: restore it, or {command} again"


def _read_jsonl(path: Path, what: str) -> list[dict]:
    """The JSON objects on the whole lines of a .jsonl file; blank lines are skipped.

    Each line is one commit: a last line without its newline is a write an interruption cut
    short, so it is left out.
    """
    try:
        data = path.read_bytes()
        text = data[: data.rfind(b"\n") + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JalError(f"{path}: cannot read ({e}); is {path.parent} a {what}?") from e
    records = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise JalError(f"{path}:{number}: not JSON ({e}); {_damaged(path.parent)}") from e
        if not isinstance(record, dict):
            raise JalError(f"{path}:{number}: {_kind(record)}, not a JSON object; {_damaged(path.parent)}")
        records.append(record)
    return records


def read_npy(path: Path, dtype: type | tuple[str, ...], ndim: int, fix: str) -> np.ndarray:
    """The array of a .npy file, memory-mapped: of `dtype` with `ndim` axes.

    `dtype`: np.integer (any integers), one dtype, or a tuple of the dtypes accepted.

    Its header is read and checked before any data: nothing is ever unpickled, and a file
    shorter or longer than its header says is refused.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in NPY_HEADERS:
                raise ValueError(f".npy format version {version} is not one numpy writes for such arrays")
            with warnings.catch_warnings():  # numpy's note on headers from Python 2 would be a second line of output
                warnings.simplefilter("ignore")
                shape, fortran_order, found = NPY_HEADERS[version](f)
            offset = f.tell()
        size = path.stat().st_size
    except NPY_ERRORS as e:
        raise JalError(f"{path}: cannot read ({e}); {fix}") from e
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not any(np.issubdtype(found, d) for d in dtypes) or len(shape) != ndim:
        wanted = "integers" if dtype is np.integer else " or ".join(np.dtype(d).name for d in dtypes)
        raise JalError(f"{path}: holds {found} of shape {shape}, not {wanted} with {ndim} axes; {fix}")
    expected = offset + math.prod(shape) * found.itemsize
    if min(shape, default=0) < 0 or size != expected:
        raise JalError(f"{path}: {size} bytes where its header {shape} implies {expected}; it is cut short or corrupt")
    return np.memmap(path, found, "r", offset, shape, "F" if fortran_order else "C")


def _finished(rows: np.ndarray, finished: int, path: Path) -> np.ndarray:
    """The rows of the `finished` rounds; later rows are rounds still to come (NaN), and are not read."""
    if len(rows) < finished:
        raise JalError(f"{path}: {len(rows)} rounds, fewer than the {finished} finished in {METRICS}; "
                       f"{_damaged(path.parent)}")  # fmt: skip
    for round_ in range(finished):
        if not np.isfinite(rows[round_]).all():
            raise JalError(f"{path}: round {round_} finished but holds NaN or inf; {_damaged(path.parent)}")
    return rows[:finished]


def _pool_indices(values, pool_size: int, where: str) -> list[int]:
    """`values` if a list of indices into the pool, else a JalError naming `where`."""
    if not isinstance(values, list) or not all(_is_int(v) for v in values):
        raise JalError(f"{where}: not a list of integers; the file is corrupt: restore it, or jal run again")
    outside = next((v for v in values if not 0 <= v < pool_size), None)
    if outside is not None:
        raise JalError(f"{where}: {outside} is outside the pool of {pool_size}; the file is corrupt: restore it, "
                       "or jal run again")  # fmt: skip
    return values


def _check_shape(array: np.ndarray, shape: tuple, path: Path) -> None:
    """Raises JalError unless `array` has `shape`, where None stands for any size of at least 1."""
    if any(n < 1 if s is None else n != s for n, s in zip(array.shape, shape, strict=True)):
        implied = ", ".join("N" if s is None else str(s) for s in shape)
        raise JalError(f"{path}: holds shape {array.shape} where {CONFIG} implies [{implied}]; "
                       f"{_damaged(path.parent)}")  # fmt: skip


def _check_rounds(run_dir: Path, config: dict, metrics: list[dict]) -> None:
    """metrics.jsonl against itself and config.json: a line per round, in order, `acquire` labels more each time."""
    record, path = config["record"], run_dir / METRICS
    if config["iterations"] < 0 or not 1 <= record["filtered_pool_size"] <= record["pool_size"]:
        raise JalError(f"{run_dir / CONFIG}: {config['iterations']} iterations over a pool of "
                       f"{record['filtered_pool_size']} of {record['pool_size']}; {_damaged(run_dir)}")  # fmt: skip
    if len(metrics) > config["iterations"] + 1:
        raise JalError(f"{path}: {len(metrics)} rounds, more than the {config['iterations'] + 1} of {CONFIG}; "
                       f"{_damaged(run_dir)}")  # fmt: skip
    labels = len(record["initial_indices"])
    for number, line in enumerate(metrics, 1):
        _check_form(line, METRICS_FORM, f"{path}:{number}", _damaged(run_dir))
        acquire = config["loop"]["acquire"] if number <= config["iterations"] else 0  # the last round only scores
        found = iteration, num_labeled, acquired = line["iteration"], line["num_labeled"], len(line["acquired"])
        if found != (number - 1, labels, acquire):
            raise JalError(f"{path}:{number}: iteration {iteration} with {num_labeled} labels and {acquired} acquired, "
                           f"not {number - 1} with {labels} and {acquire}; {_damaged(run_dir)}")  # fmt: skip
        labels += acquire


def check_directory(directory: str | os.PathLike) -> None:
    """Raises a one-line JalError for anything wrong in a run or `jal filter` directory.

    Missing, empty or foreign files; JSON without the keys, types and ranges the commands
    read; arrays of another dtype or shape, or that disagree with each other or with
    config.json's record; finished rounds whose scores or model are not finite numbers.
    Rounds that have not finished (rows past metrics.jsonl's whole lines) are not read, and
    files that are not results (status.json) are left alone.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise JalError(f"{directory}: no such directory; pass jal run or jal filter directories")
    (check_filter_dir if is_filter_dir(directory) else check_run_dir)(directory)


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Raises a one-line JalError for anything wrong in a run directory (see `check_directory`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise JalError(f"{run_dir}: no such directory; pass a jal run directory")
    if is_filter_dir(run_dir):
        raise JalError(f"{run_dir}: a jal filter directory, not a run; pass a jal run directory")
    config = read_config(run_dir)
    _check_form(config, RUN_CONFIG_FORM, str(run_dir / CONFIG), _damaged(run_dir))
    metrics = read_metrics(run_dir)
    _check_rounds(run_dir, config, metrics)
    rounds, pool_size = config["iterations"] + 1, config["record"]["filtered_pool_size"]
    _check_shape(read_pool_indices(run_dir), (pool_size,), run_dir / POOL_INDICES)
    _check_shape(read_scores(run_dir, "pool"), (rounds, pool_size), run_dir / POOL_SCORES)
    read_history(run_dir)  # the finished rounds' scores are numbers; labels and acquisitions lie in the pool
    if config["loop"]["score_test"] or (run_dir / TEST_SCORES).exists():
        _check_rows(read_scores(run_dir, "test"), rounds, len(metrics), run_dir / TEST_SCORES)
    models = read_npy(run_dir / MODELS, np.float32, 2, "runs before models were saved cannot be read")
    _check_rows(models, rounds, len(metrics), run_dir / MODELS)


def _check_rows(array: np.ndarray, rounds: int, finished: int, path: Path) -> None:
    _check_shape(array, (rounds, None), path)
    _finished(array, finished, path)


def check_filter_dir(filter_dir: str | os.PathLike) -> None:
    """Raises a one-line JalError for anything wrong in a `jal filter` directory (see `check_directory`)."""
    filter_dir = Path(filter_dir)
    config = read_config(filter_dir)
    _check_form(config, FILTER_CONFIG_FORM, str(filter_dir / CONFIG), _damaged(filter_dir))
    pool_size = config["record"]["pool_size"]
    evaluations = read_filtering(filter_dir)
    if not evaluations:
        raise JalError(f"{filter_dir}: no finished evaluation yet; wait for one")
    for number, evaluation in enumerate(evaluations, 1):
        where = f"{filter_dir / FILTERING}:{number}"
        _check_form(evaluation, EVALUATION_FORM, where, _damaged(filter_dir))
        if evaluation["removal"] not in REMOVALS or not 0 <= evaluation["num_kept"] <= pool_size:
            raise JalError(f"{where}: {evaluation['num_kept']} kept of {pool_size} by removal "
                           f"{evaluation['removal']!r:.20}, not one of {REMOVALS}; {_damaged(filter_dir)}")  # fmt: skip
    _check_shape(read_pool_indices(filter_dir), (pool_size,), filter_dir / POOL_INDICES)
    path = filter_dir / FILTER_SCORES
    scores = read_npy(path, np.float32, 1, f"is {filter_dir} a jal filter directory?")
    _check_shape(scores, (pool_size,), path)
    if not np.isfinite(scores).all():
        raise JalError(f"{path}: holds NaN or inf; {_damaged(filter_dir)}")
