"""`ActiveLearner`: the loop's pure functions behind one object, for those who prefer a class.

    learner = ActiveLearner(model, pool_inputs, test_inputs, test_labels,
                            initial_indices=idx, initial_labels=y, config=LoopConfig(acquire=10))
    indices = learner.query()            # train a fresh model, score the pool, choose
    learner.teach(indices, labels)       # labels from a person, or any oracle
    learner.save("learner.npz")
    learner = ActiveLearner.load("learner.npz", model, pool_inputs, test_inputs, test_labels)

It holds a `jal.loop.LoopState` and replaces it on `teach`; `query` is `loop.propose`, so
the same state gives the same query, before and after a save and load.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jal import loop
from jal.acquire import Acquisition
from jal.checks import check_finite, check_model, check_seed, checked_inputs
from jal.data.dataset import warn_if_identical
from jal.errors import JalError
from jal.models import Model

FORMAT = 1


def fingerprint(pool_inputs: jax.Array) -> str:
    """md5 of the pool's inputs as a learner holds them (float32): a saved learner belongs to one pool."""
    return hashlib.md5(np.ascontiguousarray(pool_inputs).tobytes()).hexdigest()


class ActiveLearner:
    """Pool-based active learning over `pool_inputs` with `model` (modAL's `ActiveLearner`, functional inside).

    Args:
      model: the model (`jal.models`).
      pool_inputs: [P, *model.input_shape] normalised floats to choose from, without NaN or inf.
      test_inputs, test_labels: a labeled test set to report accuracy on, or None (the
        accuracy is then NaN).
      initial_indices, initial_labels: the pool samples labeled before the first query.
      config: the loop's settings; its `model` is replaced by `model`. Its acquisition may
        be a name of `jal.acquire.ACQUISITIONS` or one's own `Acquisition`.
      seed: of training, scoring and stochastic choices.
    """

    def __init__(
        self,
        model: Model,
        pool_inputs,
        test_inputs=None,
        test_labels=None,
        *,
        initial_indices,
        initial_labels,
        config: loop.LoopConfig | None = None,
        seed: int = 0,
    ):
        check_model(model)
        check_seed(seed)
        self.config = (config or loop.LoopConfig())._replace(model=model)
        loop.check_config(self.config)
        self.data = _data(model, pool_inputs, test_inputs, test_labels)
        self.state = loop.init(
            jax.random.key(seed), len(pool_inputs), initial_indices, initial_labels, num_classes=model.num_classes
        )
        self.last: loop.StepInfo | None = None  # what the last query reported, its trained params included

    @property
    def model(self) -> Model:
        return self.config.model

    @property
    def labeled(self) -> np.ndarray:
        """[P] bool: which pool samples are labeled."""
        return np.asarray(self.state.labeled)

    def query(self) -> np.ndarray:
        """The `config.acquire` pool indices to label next, best first (trains a fresh model on the labels so far)."""
        indices, self.last = loop.propose(self.state, self.data, self.config)
        loop.check_trained(self.last)
        return np.asarray(indices)

    def teach(self, indices, labels) -> None:
        """Labels pool samples `indices` (unlabeled ones) with `labels`."""
        self.state = loop.label(self.state, indices, labels, num_classes=self.model.num_classes)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the learner's state and settings to one .npz file, atomically."""
        path = _checked_path(path)
        from jal.config import to_json

        settings = {
            "format": FORMAT,
            "config": to_json(self.config),
            "pool": fingerprint(self.data.pool_inputs),
        }
        state = self.state._replace(key=jax.random.key_data(self.state.key))
        tmp = path.with_name(path.name + ".tmp.npz")
        try:
            np.savez(tmp, settings=json.dumps(settings), **{k: np.asarray(v) for k, v in state._asdict().items()})
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise JalError(f"{path}: cannot write it ({e}); choose a writable place") from e
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: Model,
        pool_inputs,
        test_inputs=None,
        test_labels=None,
        *,
        acquisition: str | Acquisition | None = None,
    ) -> ActiveLearner:
        """A learner saved by `save`, over the same pool; `acquisition` gives back one's own (it is not saved)."""
        from jal.config import from_json

        path = _checked_path(path)
        check_model(model)
        try:
            with np.load(path, allow_pickle=False) as saved:
                settings = json.loads(str(saved["settings"]))
                arrays = {name: saved[name] for name in loop.LoopState._fields}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise JalError(f"{path}: cannot read it ({e}); is it a learner saved by ActiveLearner.save?") from e
        if settings.get("format") != FORMAT:
            raise JalError(f"{path}: saved in format {settings.get('format')}, this jal reads {FORMAT}")
        data = _data(model, pool_inputs, test_inputs, test_labels)
        if fingerprint(data.pool_inputs) != settings["pool"]:
            raise JalError(f"{path}: saved over another pool; pass the pool inputs it was saved with")
        config = from_json(loop.LoopConfig, settings["config"], f"{path}")
        if acquisition is not None:
            config = config._replace(acquisition=acquisition)
        learner = cls.__new__(cls)
        learner.config = config._replace(model=model)
        loop.check_config(learner.config)
        learner.data = data
        arrays["key"] = jax.random.wrap_key_data(arrays["key"])
        learner.state = loop.LoopState(**{k: jnp.asarray(v) for k, v in arrays.items()})
        learner.last = None
        return learner


def _checked_path(path) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise JalError(f"`path` {path!r:.40} is not a file path; pass a str or pathlib.Path")
    return Path(path)


def _data(model: Model, pool_inputs, test_inputs, test_labels) -> loop.Data:
    if (test_inputs is None) != (test_labels is None):
        raise JalError("give `test_inputs` and `test_labels` together, or neither")
    if test_inputs is None:
        test_inputs, test_labels = np.zeros((0, *model.input_shape), np.float32), np.zeros(0, np.int32)
    pool_inputs = _device_inputs(model, pool_inputs, "pool_inputs")
    test_inputs = _device_inputs(model, test_inputs, "test_inputs")
    warn_if_identical(pool_inputs, "`pool_inputs`")
    return loop.Data(pool_inputs, test_inputs, _checked_labels(test_labels, len(test_inputs), model.num_classes))


def _device_inputs(model: Model, inputs, name: str) -> jax.Array:
    """float32 inputs on the device, checked there (a float64 input beyond float32's range becomes inf)."""
    inputs = jnp.asarray(checked_inputs(inputs, model.input_shape, name), jnp.float32)
    check_finite(inputs, name)
    return inputs


def _checked_labels(labels, size: int, num_classes: int) -> jax.Array:
    labels = np.asarray(labels)
    if labels.shape != (size,) or labels.dtype.kind not in "iu" or ((labels < 0) | (labels >= num_classes)).any():
        raise JalError(f"`test_labels` must be {size} classes in 0..{num_classes - 1}, one per test input")
    return jnp.asarray(labels, jnp.int32)
