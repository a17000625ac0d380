"""Experiment tracking: each round of a run mirrored to Weights & Biases or TensorBoard.

    tracker = trackers_from(wandb="bald-mnist", tensorboard="tb")   # --wandb PROJECT[/GROUP], --tensorboard DIR
    tracker.start(config, run_dir)
    tracker.log_round(metrics, pool_scores, test_scores, acquired_inputs)   # once per round
    tracker.finish("finished")

The run directory is the record of a run; a tracker only mirrors it. A tracker that fails
(no network, no login, its package not installed, an error inside it) prints one line,
"jal: warning: ...", logs nothing more, and the run goes on. Every round is logged against
the number of labels ("labels": W&B's step metric, TensorBoard's global step): test
accuracy and NLL, the last epoch's training loss, the mean and max pool score, the
acquired samples' scores (with the samples as images, captioned with their scores, where
the inputs are images), and histograms of the pool's and test set's scores. The run's
settings are the W&B run's config and TensorBoard's "config" text. W&B runs of one setting
share a group, whatever their seed (`group_name`), so W&B shows seeds side by side.

How `jal run` drives it, through `jal.experiment.run`'s callbacks:

    tracker = trackers_from(args.wandb, args.tensorboard)   # before anything runs
    on_start(rounds, finished):  tracker.start(store.read_config(out), out)   # if finished < rounds
    on_round(metrics):           if tracker.active:
                                     tracker.log_round(metrics, *round_arrays(out, metrics, x_train))
    after `run` returns:         tracker.finish("finished"); on an exception, tracker.finish(state)
                                 with the state written to status.json ("interrupted", "failed")

`x_train` is the dataset's raw training inputs (`jal.data.load_dataset(config.data).x_train`;
None logs no images). A resumed run logs its new rounds to a new tracker run in the same
group (TensorBoard: the same folder), so its curves go on from where they stopped.

Importing this module imports neither wandb nor tensorboardX: each tracker imports its
package when it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from jal.errors import JalError

# A pool's or test set's scores as a histogram; never every score as a table, which W&B
# would store again each round.
HISTOGRAM_BINS = 64
MAX_IMAGES = 16  # acquired samples shown per round; a batch of 100 images is no longer readable


class Tracker(Protocol):
    """What a run tells a tracker, in order: start, log_round once per new round, finish."""

    def start(self, config: dict, run_dir: str | os.PathLike) -> None:
        """Opens the tracker's run; `config` is the run's config.json."""

    def log_round(
        self,
        metrics: dict,
        pool_scores: np.ndarray,
        test_scores: np.ndarray | None = None,
        acquired_inputs: np.ndarray | None = None,
    ) -> None:
        """Logs one round: its metrics.jsonl line, its scores [P] and [T], the inputs it acquired [B, ...]."""

    def finish(self, state: str = "finished") -> None:
        """Closes the tracker's run; `state` as in status.json."""


def group_name(config: dict) -> str:
    """The group of a run's setting: its acquisition and a hash of its settings but the seed.

    What the run resolved its settings to ("record": initial labels, versions) depends on
    the seed or the machine, so it is left out too.
    """
    setting = {k: v for k, v in config.items() if k not in ("seed", "record", "resumed")}
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:8]
    acquisition = config.get("loop", {}).get("acquisition")
    return f"{acquisition}-{digest}" if acquisition else digest


def is_image_batch(inputs: np.ndarray) -> bool:
    """Whether inputs [B, ...] are images: [B, H, W], or [B, H, W, C] with 1 or 3 channels."""
    return inputs.ndim == 3 or (inputs.ndim == 4 and inputs.shape[-1] in (1, 3))


def as_uint8(images: np.ndarray) -> np.ndarray:
    """Images [B, H, W, C] of any dtype as bytes, for both services; one scale for the batch keeps them comparable."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    images = images.astype(np.float64)
    low, high = images.min(), images.max()
    return np.round(255 * (images - low) / (high - low if high > low else 1)).astype(np.uint8)


def _finite(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64).ravel()
    return scores[np.isfinite(scores)]


def _requires(package: str, extra: str):
    """The module `package`, or an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"cannot import {package} ({e}); install it with pip install 'jal[{extra}]'") from e


def _scalars(metrics: dict) -> dict:
    """The round's numbers, under the names both services show."""
    scalars = {
        "iteration": metrics["iteration"],
        "test/accuracy": metrics["test_accuracy"],
        "test/nll": metrics["test_nll"],
        "pool/mean_score": metrics["mean_pool_score"],
        "pool/max_score": metrics["max_pool_score"],
        "round/seconds": metrics["seconds"],
    }
    if metrics["train_loss"]:
        scalars["train/loss"] = metrics["train_loss"][-1]
    if metrics["acquired_scores"]:
        scalars["acquired/mean_score"] = float(np.mean(metrics["acquired_scores"]))
    return scalars


def _shown(acquired_inputs: np.ndarray | None, scores: Sequence[float]) -> tuple[np.ndarray, list[float]] | None:
    """The acquired images [n, H, W, C] to show and their scores, or None where there are none."""
    if acquired_inputs is None or not len(scores):
        return None
    inputs = np.asarray(acquired_inputs)
    if not is_image_batch(inputs):
        return None
    images = inputs[..., None] if inputs.ndim == 3 else inputs
    return as_uint8(images[:MAX_IMAGES]), list(scores)[:MAX_IMAGES]


class WandbTracker:
    """Weights & Biases: one W&B run per run directory, in `project`, in `group` (default: `group_name`)."""

    name = "W&B tracking"

    def __init__(self, project: str, group: str | None = None, *, init_timeout: float | None = None):
        self.project, self.group, self.init_timeout = project, group, init_timeout
        self.run = None

    def start(self, config: dict, run_dir: str | os.PathLike) -> None:
        wandb = _requires("wandb", "wandb")
        run_dir = Path(run_dir)
        # Console capture off: the progress bar is not worth mirroring. wandb's own default
        # timeout (90 s, or $WANDB_INIT_TIMEOUT) stands unless one is given.
        settings = {"console": "off"} | ({"init_timeout": self.init_timeout} if self.init_timeout else {})
        self.run = wandb.init(
            project=self.project,
            group=self.group or group_name(config),
            name=run_dir.name,
            notes=f"local run directory: {run_dir.resolve()}",
            config=config,
            reinit="create_new",  # a run of the caller's own stays open
            settings=wandb.Settings(**settings),
        )
        self.run.define_metric("labels")
        self.run.define_metric("*", step_metric="labels")

    def log_round(self, metrics, pool_scores, test_scores=None, acquired_inputs=None) -> None:
        import wandb

        row = {"labels": metrics["num_labeled"], **_scalars(metrics)}
        row["pool/scores"] = wandb.Histogram(_finite(pool_scores), num_bins=HISTOGRAM_BINS)
        if test_scores is not None:
            row["test/scores"] = wandb.Histogram(_finite(test_scores), num_bins=HISTOGRAM_BINS)
        if metrics["acquired_scores"]:
            row["acquired/scores"] = wandb.Histogram(metrics["acquired_scores"], num_bins=HISTOGRAM_BINS)
        if shown := _shown(acquired_inputs, metrics["acquired_scores"]):
            row["acquired/images"] = [
                wandb.Image(image.squeeze(-1) if image.shape[-1] == 1 else image, caption=f"{score:.4f}")
                for image, score in zip(*shown, strict=True)
            ]
        self.run.log(row)

    def finish(self, state: str = "finished") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if state == "finished" else 1)


class TensorBoardTracker:
    """TensorBoard event files (through tensorboardX, without TensorFlow) in `logdir`/<run directory's name>."""

    name = "TensorBoard tracking"

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.writer = None

    def start(self, config: dict, run_dir: str | os.PathLike) -> None:
        tensorboardX = _requires("tensorboardX", "tensorboard")
        self.writer = tensorboardX.SummaryWriter(str(self.logdir / Path(run_dir).name))
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # Markdown code

    def log_round(self, metrics, pool_scores, test_scores=None, acquired_inputs=None) -> None:
        step = metrics["num_labeled"]
        for name, value in _scalars(metrics).items():
            self.writer.add_scalar(name, value, step)
        self.writer.add_histogram("pool/scores", _finite(pool_scores), step)
        if test_scores is not None:
            self.writer.add_histogram("test/scores", _finite(test_scores), step)
        if metrics["acquired_scores"]:
            self.writer.add_histogram("acquired/scores", np.asarray(metrics["acquired_scores"]), step)
        if shown := _shown(acquired_inputs, metrics["acquired_scores"]):
            images, scores = shown
            self.writer.add_images("acquired/images", images, step, dataformats="NHWC")
            self.writer.add_text("acquired/image_scores", ", ".join(f"{s:.4f}" for s in scores), step)
        self.writer.flush()  # a round takes seconds to minutes: show it at once

    def finish(self, state: str = "finished") -> None:
        if self.writer is not None:
            self.writer.add_text("state", state)
            self.writer.close()


class Guarded:
    """A tracker whose first failure prints one warning and turns it off: the run never stops for it."""

    def __init__(self, tracker: Tracker):
        self.tracker, self.failed = tracker, False
        self.name = getattr(tracker, "name", type(tracker).__name__)

    @property
    def active(self) -> bool:
        return not self.failed

    def _call(self, method: str, *args) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as e:
            self.failed = True
            error = " ".join(str(e).split()) or type(e).__name__
            print(
                f"jal: warning: {self.name} failed in {method} ({error[:300]}); it logs nothing more, "
                "the run goes on and its directory keeps every result",
                file=sys.stderr,
                flush=True,
            )

    def start(self, config, run_dir) -> None:
        self._call("start", config, run_dir)

    def log_round(self, metrics, pool_scores, test_scores=None, acquired_inputs=None) -> None:
        self._call("log_round", metrics, pool_scores, test_scores, acquired_inputs)

    def finish(self, state: str = "finished") -> None:
        self._call("finish", state)


class Combined:
    """Several trackers as one, each called in turn."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    @property
    def active(self) -> bool:
        """Whether any tracker still logs: if not, a round's scores need not be read."""
        return any(getattr(tracker, "active", True) for tracker in self.trackers)

    def start(self, config, run_dir) -> None:
        for tracker in self.trackers:
            tracker.start(config, run_dir)

    def log_round(self, metrics, pool_scores, test_scores=None, acquired_inputs=None) -> None:
        for tracker in self.trackers:
            tracker.log_round(metrics, pool_scores, test_scores, acquired_inputs)

    def finish(self, state: str = "finished") -> None:
        for tracker in self.trackers:
            tracker.finish(state)


def combine(*trackers: Tracker) -> Combined:
    """One tracker for several, each guarded: one that fails leaves the others logging."""
    return Combined([t if isinstance(t, Guarded) else Guarded(t) for t in trackers])


def parse_wandb(value: str) -> tuple[str, str | None]:
    """`--wandb PROJECT[/GROUP]` as (project, group or None); a JalError for a malformed one."""
    project, slash, group = value.partition("/")
    if not project or (slash and not group) or "/" in group:
        raise JalError(f"--wandb {value!r}: give PROJECT or PROJECT/GROUP")
    return project, group or None


def trackers_from(wandb: str | None = None, tensorboard: str | None = None) -> Combined:
    """The tracker `jal run --wandb PROJECT[/GROUP] --tensorboard DIR` asks for (none: one that does nothing)."""
    trackers = []
    if wandb is not None:
        trackers.append(WandbTracker(*parse_wandb(wandb)))
    if tensorboard is not None:
        trackers.append(TensorBoardTracker(tensorboard))
    return combine(*trackers)


def round_arrays(
    run_dir: str | os.PathLike, metrics: dict, x_train: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A finished round's pool scores [P], test scores [T] (None without) and acquired inputs, from the run directory.

    `x_train` is the dataset's training inputs (raw), which `pool_indices.npy` and the
    round's "acquired" (indices into the pool) index; None gives no inputs.
    """
    from jal import store

    run_dir, round_ = Path(run_dir), metrics["iteration"]
    pool_scores = np.array(store.read_scores(run_dir, "pool")[round_], np.float32)  # float16 histories too
    test_scores = None
    if (run_dir / store.TEST_SCORES).exists():
        test_scores = np.array(store.read_scores(run_dir, "test")[round_])
    inputs = None
    if x_train is not None:
        inputs = np.asarray(x_train[store.read_pool_indices(run_dir)[metrics["acquired"]]])
    return pool_scores, test_scores, inputs
