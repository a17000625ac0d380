"""An open labelling project: its files, its state, the lock that keeps a second server out, the round in training.

PROJECT_DIR/
  config.json       the settings (`ServeConfig`), and under "record" what they resolved to:
                    the data's source (with md5s), input shape, classes, pool and test sizes;
                    written last when a project is made: without it, there is no project
  rounds.jsonl      one finished round per line: its proposals, their scores, its model's test
                    accuracy; round 0 is the random first proposal
  labels.jsonl      append-only: each label given ({"index", "label", "round", "time"}) or
                    undone ({"undo": index, "time"}), one per line, in order
  scores/NNNNNN.npy float32 [P]: every pool sample's score in round N, for its histogram

A label is written, flushed and fsynced before the request that gave it is answered, so
whatever was acknowledged survives a `kill -9` or a crash of the machine. A round's scores
are written whole and renamed into place before its line commits it. A last line that a
kill cut short was never acknowledged, and is cut away on reopening.

Requests run in several threads; one lock guards the state and the files. A round trains
in a thread of its own, on a snapshot of the labels: labels given meanwhile are kept for
the next round.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jal import loop, resources, store, workdir
from jal.config import to_json
from jal.errors import JalError
from jal.experiment import _differences
from jal.serve import rounds
from jal.serve.config import ServeConfig
from jal.serve.data import Samples, load_samples
from jal.serve.render import Renderer
from jal.serve.state import Conflict, Label, Round, State, check_can_train, finish_round, give, replay, undo

CONFIG, ROUNDS, LABELS, SCORES = store.CONFIG, "rounds.jsonl", "labels.jsonl", "scores"
# Where the data lie may change between sessions, so long as they hold the same (record.data's md5s).
MOVABLE = ("data.path", "data.mnist_dir", "data.tfds_data_dir")


class Job(NamedTuple):
    """A round training in the background, or the last one that failed."""

    round: int
    started: float  # time.time()
    expected: float | None  # seconds the previous round took: the progress estimate's measure
    error: str | None = None  # why it failed; None while it runs


class Project:
    """Labels given and undone, rounds started; every change on disk before it is visible."""

    def __init__(self, directory: Path, config: ServeConfig, samples: Samples, model_config: loop.LoopConfig,
                 state: State):  # fmt: skip
        self.directory, self.config, self.samples, self.loop_config = directory, config, samples, model_config
        self.renderer = Renderer(samples.raw)
        self.state = state  # replaced whole under the lock: readers take it as one consistent value
        self.job: Job | None = None
        self._lock = threading.Lock()
        self._closed = False  # once the server stops, a round finishing late commits nothing
        self._thread: threading.Thread | None = None
        # Unbuffered: a line goes to the file in one write, and a failed one can be cut away again.
        self._labels = open(directory / LABELS, "ab", buffering=0)
        self._rounds = open(directory / ROUNDS, "ab", buffering=0)

    @property
    def pool_size(self) -> int:
        return len(self.samples.raw)

    @property
    def num_classes(self) -> int:
        return self.samples.num_classes

    @property
    def training(self) -> bool:
        return self.job is not None and self.job.error is None

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the round in training, if any; whether none trains any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not (self._thread and self._thread.is_alive())

    def give(self, index: int, label: int) -> State:
        """Labels pool sample `index` with class `label`; raises JalError or Conflict where it cannot."""
        with self._lock:
            now = time.time()
            state = give(self.state, index, label, time=now, num_classes=self.num_classes, pool_size=self.pool_size)
            _append(self._labels, {"index": index, "label": label, "round": state.round.number, "time": now})
            self.state = state
        return state

    def undo(self) -> Label:
        """Takes the last label back; raises Conflict where there is none of the current round."""
        with self._lock:
            state, undone = undo(self.state)
            _append(self._labels, {"undo": undone.index, "time": time.time()})
            self.state = state
        return undone

    def start_round(self) -> Job:
        """Starts training the next round in the background; raises Conflict while one trains, or where none can."""
        with self._lock:
            if self.training:
                elapsed = time.time() - self.job.started
                raise Conflict(f"round {self.job.round} is training already (for {elapsed:.0f} s); wait for it")
            check_can_train(self.state, self.pool_size)
            previous = self.state.round
            job = Job(previous.number + 1, time.time(), previous.seconds if previous.number else None)
            self.job = job
            labels = dict(self.state.labelled)  # the snapshot this round trains on
        self._thread = threading.Thread(target=self._train, args=(job, labels), name=f"round {job.round}", daemon=True)
        self._thread.start()
        return job

    def _train(self, job: Job, labels: dict[int, int]) -> None:
        start = time.perf_counter()
        try:
            proposal = rounds.propose(
                self.samples.data, self.loop_config, labels, number=job.round, seed=self.config.seed
            )
            new = Round(
                job.round,
                tuple(int(i) for i in proposal.indices),
                tuple(float(s) for s in proposal.scores),
                len(labels),
                proposal.test_accuracy,
                proposal.test_nll,
                time.perf_counter() - start,
                time.time(),
            )
            _write_scores(self.directory / SCORES / f"{job.round:06d}.npy", proposal.pool_scores)
            with self._lock:
                if self._closed:
                    return
                state = finish_round(self.state, new)
                _append(self._rounds, state.round._asdict())
                self.state, self.job = state, None
        except Exception as e:  # the server goes on; the page shows why the round failed
            if not isinstance(e, JalError):
                traceback.print_exc(file=sys.stderr)
            reason = str(e) if isinstance(e, JalError) else f"{type(e).__name__}: {e}"
            with self._lock:
                self.job = job._replace(error=f"round {job.round} failed: {reason}")

    def pool_scores(self, number: int) -> np.ndarray:
        """Every pool sample's score in round `number` (1 on), as saved."""
        return np.load(self.directory / SCORES / f"{number:06d}.npy", allow_pickle=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._labels.close()
            self._rounds.close()


@contextlib.contextmanager
def open_project(directory: str | os.PathLike, config: ServeConfig):
    """Yields the project in `directory`, made first if there is none; it stays locked to this process meanwhile.

    Reopened, its settings must be `config`'s (where its data lie may differ, not what they
    hold); `config` comes from its own config.json and the flags given (`saved_config`).
    """
    directory = Path(directory)
    fresh = not (directory / CONFIG).exists()
    with workdir.writing(directory, fresh=fresh, leftovers=_unstarted, committed=lambda: (directory / CONFIG).exists()):
        samples = load_samples(config.data)
        model = config.model.build(tuple(samples.record["input_shape"]), samples.num_classes)
        loop_config = config.loop._replace(model=model)
        loop.check_config(loop_config)
        pool_size, test_size = len(samples.raw), samples.record["test_size"]
        if not 1 <= config.initial <= pool_size:
            raise JalError(f"`initial` {config.initial} must be between 1 and the pool size {pool_size}")
        resources.check_fits(resources.loop_needs(loop_config, pool_size=pool_size, test_size=test_size))
        settings = {**to_json(config), "record": samples.record}
        settings = json.loads(json.dumps(settings))  # as config.json holds it: tuples as lists
        (directory / SCORES).mkdir(exist_ok=True)
        workdir.remove_temporaries(directory / SCORES)
        state = _create(directory, settings, config) if fresh else _reopen(directory, settings)
        project = Project(directory, config, samples, loop_config, state)
        try:
            yield project
        finally:
            project.close()


def saved_config(directory: str | os.PathLike) -> Path | None:
    """The config.json a reopened project's settings start from; None for a project to make."""
    directory = Path(directory)
    path = directory / CONFIG
    if not path.exists():
        return None
    if not (directory / LABELS).exists():
        raise JalError(f"{directory} is not a jal serve project (it has no {LABELS}); choose another --out")
    return path


def _create(directory: Path, settings: dict, config: ServeConfig) -> State:
    pool_size = settings["record"]["pool_size"]
    first = loop.initial_indices(pool_size, config.initial, config.seed)
    state = State.new(Round(0, tuple(int(i) for i in first), (), 0, None, None, 0.0, time.time()))
    (directory / LABELS).touch()
    with open(directory / ROUNDS, "wb", buffering=0) as f:
        _append(f, state.round._asdict())
    store.write_json(directory / CONFIG, settings)  # the project exists from here on
    return state


def _reopen(directory: Path, settings: dict) -> State:
    saved = store.read_json(directory / CONFIG, "jal serve project")
    if not isinstance(saved, dict) or not isinstance(saved.get("record"), dict):
        raise JalError(f"{directory / CONFIG}: not a jal serve project's config.json; restore it")
    changed = [path for path in _differences(_settings(saved), _settings(settings)) if not path.startswith(MOVABLE)]
    if changed:
        shown = "; ".join(f"`{path.rsplit('.', 1)[-1]}` {_at(saved, path)}, not {_at(settings, path)}"
                          for path in changed[:3])  # fmt: skip
        raise JalError(
            f"{directory}: the project was made with {shown}; drop the flags that change it, "
            "or choose another --out for other settings"
        )
    before, now = (_identity(record) for record in (saved["record"], settings["record"]))
    if before != now:
        key = next(key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key))
        what = (
            "other files, or other contents by their md5" if key == "data" else f"{before.get(key)}, now {now.get(key)}"
        )
        raise JalError(
            f"{directory}: the data differ from the project's ({key}: {what}); give the data it was made with"
        )
    if saved != settings:  # the same data found elsewhere: look there next time
        store.write_json(directory / CONFIG, settings)
    record = settings["record"]
    rounds_ = [_round(r, directory / ROUNDS, number) for number, r in enumerate(_read_lines(directory / ROUNDS))]
    events = _read_lines(directory / LABELS)
    try:
        return replay(rounds_, events, num_classes=record["num_classes"], pool_size=record["pool_size"])
    except (JalError, KeyError, TypeError) as e:
        raise JalError(f"{directory / LABELS}: does not add up ({e}); the project's files are damaged") from e


def _settings(saved: dict) -> dict:
    return {key: value for key, value in saved.items() if key != "record"}


def _at(settings: dict, path: str) -> str:
    """The setting at `path` as a flag takes it: a list as its items."""
    from jal.config import get

    try:
        value = get(settings, path)
    except (KeyError, TypeError):
        return "none"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _identity(record: dict) -> dict:
    """What identifies a project's data in its record: all but where they were read from and how they were found."""
    data = record.get("data")
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key not in ("path", "origin")}
    return {**record, "data": data}


def _round(record: dict, path: Path, number: int) -> Round:
    try:
        round_ = Round(**record)
    except TypeError as e:
        raise JalError(f"{path}:{number + 1}: not a round ({e}); the project's files are damaged") from e
    if round_.number != number:
        raise JalError(f"{path}:{number + 1}: round {round_.number} where round {number} belongs; it is damaged")
    return round_._replace(proposals=tuple(round_.proposals), scores=tuple(round_.scores))


def _read_lines(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file's whole lines; a last line a kill cut short is cut away first."""
    store.committed_rounds(path.parent, path.name)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise JalError(f"{path}:{number}: not JSON ({e}); the project's files are damaged") from e
        if not isinstance(records[-1], dict):
            raise JalError(f"{path}:{number}: not a JSON object; the project's files are damaged")
    return records


def _append(file, record: dict) -> None:
    """One line, on disk before this returns; where writing fails, the file is left as it was."""
    size = os.fstat(file.fileno()).st_size
    line = memoryview((json.dumps(record) + "\n").encode())
    try:
        while line:
            line = line[file.write(line) :]
        os.fsync(file.fileno())
    except OSError:
        os.ftruncate(file.fileno(), size)
        raise


def _write_scores(path: Path, scores: np.ndarray) -> None:
    """A round's pool scores, whole or not at all: written aside, synced, then renamed into place."""
    tmp = path.with_name(f".{path.name}{workdir.TEMPORARY}")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(scores, np.float32))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _unstarted(directory: Path) -> bool:
    """Whether `directory` holds only what a project's making that never finished left."""
    return all(p.name in (ROUNDS, LABELS, SCORES) or p.name.endswith(workdir.TEMPORARY) for p in directory.iterdir())
