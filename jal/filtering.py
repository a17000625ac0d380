"""Offline data filtering: score the pool once, remove the least informative, train on the rest.

The other side of the seed's argument: active learning selects the most informative
samples online; filtering removes the least informative offline, trusting that what is
uninformative to an early model stays so. `filter_curve` measures it: for each fraction
x, a model trained on every kept sample (with its label), against removing the same
fraction at random. `jal run --filter-fraction x` runs active learning on a filtered pool.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jal.acquire import check_estimator
from jal.acquire.estimators import ESTIMATORS, accuracy_and_nll
from jal.checks import check_finite, check_key, check_model, check_sizes, checked_inputs
from jal.errors import JalError
from jal.loop import UNLABELED, Data
from jal.models import Model
from jal.scoring import mc_log_probs
from jal.train import TrainConfig, epoch_size, train

FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def kept_indices(scores: np.ndarray, fraction: float, *, protected=(), rng: np.random.Generator | None = None):
    """The pool indices kept after removing `fraction` of the candidates, sorted.

    Candidates are the pool samples not `protected` (the scoring model's own labeled
    samples, which are always kept). Without `rng` the lowest-scoring candidates go (ties:
    the lower index first); with it, a uniformly random set of the same size.
    """
    _check_fraction("fraction", fraction)
    scores = np.asarray(scores)
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.number):
        raise JalError(f"`scores` of {scores.dtype} and shape {list(scores.shape)}: pass one number per pool sample")
    candidate = np.ones(len(scores), bool)
    candidate[_checked_indices("protected", protected, len(scores))] = False
    candidates = np.flatnonzero(candidate)
    num_removed = int(round(fraction * len(candidates)))
    if rng is None:
        removed = candidates[np.argsort(scores[candidates], kind="stable")[:num_removed]]
    else:
        removed = rng.choice(candidates, num_removed, replace=False)
    keep = np.ones(len(scores), bool)
    keep[removed] = False
    return np.flatnonzero(keep)


def _check_fraction(name: str, fraction) -> None:
    if not 0 <= fraction < 1:  # NaN too
        raise JalError(f"`{name}` {fraction} must be in [0, 1): the share of the pool removed")


def _checked_indices(name: str, indices, size: int) -> np.ndarray:
    """Pool indices as an int array, after refusing what is not one in 0..size-1."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return indices.astype(int).ravel()  # numpy reads `()` and `[]` as floats
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or indices.min() < 0 or indices.max() >= size:
        raise JalError(f"`{name}` must be a 1-D array of pool indices in 0..{size - 1}")
    return indices


class Evaluation(NamedTuple):
    fraction: float
    removal: str  # "lowest" (by score) or "random"
    num_kept: int
    test_accuracy: float
    test_nll: float


def fit(key, model: Model, inputs: jax.Array, labels, kept, config: TrainConfig) -> dict:
    """A fresh model trained on inputs[kept] with labels[kept] (the reference's training).

    The whole input array stays on the device and only `kept` is read, so any number of
    kept samples up to `config.min_samples_per_epoch` runs the same compiled function.
    """
    check_key(key)
    check_model(model)
    inputs = checked_inputs(inputs, model.input_shape)
    check_finite(inputs)
    size = inputs.shape[0]
    kept = _checked_indices("kept", kept, size)
    if len(kept) == 0:
        raise JalError("`kept` is empty; a model needs at least one labeled sample to train on")
    labels = np.asarray(labels)
    given = labels[kept] if labels.shape == (size,) and labels.dtype.kind in "iu" else None
    if given is None or given.min() < 0 or given.max() >= model.num_classes:
        raise JalError(f"`labels` must hold one class in 0..{model.num_classes - 1} per input")
    masked = np.full(size, UNLABELED, np.int32)
    masked[kept] = labels[kept]
    order = np.full(size, UNLABELED, np.int32)
    order[: len(kept)] = kept
    params, _ = train(
        key,
        model,
        inputs,
        jnp.asarray(masked),
        jnp.asarray(order),
        jnp.int32(len(kept)),
        config=config,
        samples_per_epoch=epoch_size(len(kept), config),
    )
    return params


def test_metrics(key, model: Model, params, data: Data, *, mc_samples: int = 32) -> tuple[float, float]:
    """Test accuracy and NLL of the MC-mean predictive. The test set is only ever evaluated."""
    log_probs = mc_log_probs(model, params, data.test_inputs, key=key, mc_samples=mc_samples)
    accuracy, nll = accuracy_and_nll(log_probs, data.test_labels)
    return float(accuracy), float(nll)


def score_all(key, model: Model, params, inputs: jax.Array, estimator: str, *, mc_samples: int = 32) -> np.ndarray:
    """One informativeness score per input [N] under the scoring model `params`."""
    check_sizes(mc_samples=mc_samples)
    check_estimator(estimator, mc_samples)
    return np.asarray(ESTIMATORS[estimator](mc_log_probs(model, params, inputs, key=key, mc_samples=mc_samples)))


def filter_curve(
    key,
    model: Model,
    data: Data,
    pool_labels,
    scores: np.ndarray,
    *,
    protected=(),
    fractions=FRACTIONS,
    config: TrainConfig,
    mc_samples: int = 32,
    seed: int = 0,
    skip: int = 0,
    on_result=lambda evaluation: None,
) -> list[Evaluation]:
    """For each fraction: train on what score-based removal keeps, and on what random removal keeps.

    Both removals of one fraction train from the same key, so they differ only in the data.
    The first `skip` evaluations (done before an interruption) are not trained again; their
    random draws still are, so the others come out as they would have.
    """
    # Every setting is checked before the first model trains, not at the fraction it breaks.
    check_key(key)
    check_sizes(mc_samples=mc_samples)
    for fraction in fractions:
        _check_fraction("fractions", fraction)
    if not len(scores) == len(pool_labels) == data.pool_inputs.shape[0]:
        raise JalError(
            f"{len(scores)} `scores` and {len(pool_labels)} `pool_labels` for {data.pool_inputs.shape[0]} pool inputs; "
            "give one of each per pool input"
        )
    rng = np.random.default_rng(seed)
    results = []
    for i, fraction in enumerate(fractions):
        fraction_key = jax.random.fold_in(key, i)
        for removal in ("lowest", "random"):
            if fraction == 0 and removal == "random":
                continue  # the same (whole) pool as "lowest" at 0
            kept = kept_indices(scores, fraction, protected=protected, rng=rng if removal == "random" else None)
            if skip:
                skip -= 1
                continue
            fit_key, test_key = jax.random.split(fraction_key)
            params = fit(fit_key, model, data.pool_inputs, pool_labels, kept, config)
            accuracy, nll = test_metrics(test_key, model, params, data, mc_samples=mc_samples)
            results.append(Evaluation(float(fraction), removal, len(kept), accuracy, nll))
            on_result(results[-1])
    return results
