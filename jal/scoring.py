"""MC-dropout log-probabilities [N, K, C] of any `Model`, chunk by chunk, and pools of any size.

Every input gets its own dropout draws for every MC sample, as the reference's K forward
passes in train mode give it: input i's draws come from fold_in(key, offset + i), so its
scores depend on its position in the pool and not on how the pool is chunked. With
`consistent=True` every input shares the same K draws, from `key` alone: K fixed networks,
which joint quantities over several inputs (BatchBALD, EPIG) need.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jal.acquire import check_estimator
from jal.acquire.estimators import ESTIMATORS
from jal.checks import check_finite, check_key, check_model, check_sizes, checked_inputs
from jal.chunks import from_chunks, map_in_chunks, pad_to_chunks
from jal.data.normalization import Normalization
from jal.errors import JalError
from jal.models import Model, Params


def mc_log_probs(
    model: Model,
    params: Params,
    inputs: jax.Array,
    *,
    key: jax.Array,
    mc_samples: int = 32,
    chunk_size: int = 32,
    offset: int | jax.Array = 0,
    consistent: bool = False,
) -> jax.Array:
    """MC-dropout log-probabilities of a device-resident set of inputs; memory bounded by `chunk_size`.

    Args:
      model: the model (`jal.models`).
      params: its parameters.
      inputs: [N, *model.input_shape] normalised floats, without NaN or inf.
      key: PRNG key of the dropout draws.
      mc_samples: K.
      chunk_size: inputs per chunk.
      offset: the position of inputs[0] in a larger array scored piece by piece.
      consistent: the same K draws for every input (consistent MC dropout).

    Returns:
      [N, K, C] float32 log-probabilities.
    """
    check_model(model)
    check_sizes(mc_samples=mc_samples, chunk_size=chunk_size)
    check_key(key)
    inputs = checked_inputs(inputs, model.input_shape)
    check_finite(inputs)
    settings = dict(mc_samples=mc_samples, chunk_size=chunk_size, offset=offset, consistent=consistent)
    return _mc_log_probs(model, params, inputs, key=key, **settings)


@functools.partial(jax.jit, static_argnames=("model", "mc_samples", "chunk_size", "consistent"))
def _mc_log_probs(model, params, inputs, *, key, mc_samples, chunk_size, offset, consistent):
    chunks = pad_to_chunks(inputs, chunk_size)

    def score_chunk(args):
        index, chunk = args
        if consistent:
            keys = key
        else:
            positions = offset + index * chunk_size + jnp.arange(chunk_size)
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(positions)
        return model.mc_log_probs(params, chunk, keys, mc_samples)

    return from_chunks(jax.lax.map(score_chunk, (jnp.arange(chunks.shape[0]), chunks)), inputs.shape[0])


def log_probs(model: Model, params: Params, inputs: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """log p(y | x) [N, C] with dropout off (eval mode), chunked like `mc_log_probs`."""
    check_model(model)
    check_sizes(chunk_size=chunk_size)
    inputs = checked_inputs(inputs, model.input_shape)
    check_finite(inputs)
    return _log_probs(model, params, inputs, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def _log_probs(model, params, inputs, *, chunk_size):
    return map_in_chunks(lambda chunk: model.log_probs(params, chunk), inputs, chunk_size)


@functools.partial(jax.jit, static_argnames=("model", "estimator", "mc_samples", "chunk_size"))
def _score_batch(model, params, inputs, offset, key, normalization, *, estimator, mc_samples, chunk_size):
    if normalization is not None:
        inputs = normalization.apply(inputs)  # raw values: normalised on the device
    log_probs = _mc_log_probs(
        model, params, inputs, key=key, mc_samples=mc_samples, chunk_size=chunk_size, offset=offset, consistent=False
    )
    return ESTIMATORS[estimator](log_probs)


def score_pool(
    model: Model,
    params: Params,
    inputs,
    *,
    key: jax.Array,
    estimator: str = "bald",
    mc_samples: int = 32,
    chunk_size: int = 32,
    batch_size: int = 8192,
    normalization: Normalization | None = None,
) -> np.ndarray:
    """One score per input of a pool of any size, streamed from host memory.

    The pool is read `batch_size` inputs at a time (a numpy memmap is read lazily), so
    host and device memory stay bounded whatever its size; every batch has the same
    shape (the last is padded), so nothing recompiles, and the host reads the next batch
    while the device scores the current one. The scores equal those of `mc_log_probs` on
    the whole pool at once.

    Args:
      model: the model (`jal.models`).
      params: its parameters.
      inputs: array-like [N, *model.input_shape]: raw numbers with `normalization`, else
        normalised floats; NaN and inf are refused.
      key: PRNG key of the dropout draws.
      estimator: one of `jal.acquire.estimators.ESTIMATORS`.
      mc_samples: K.
      chunk_size: inputs per device chunk.
      batch_size: inputs per host-to-device transfer.
      normalization: applied to each batch on the device (`jal.data.Normalization`).

    Returns:
      float32 [N] scores.
    """
    check_model(model)
    check_sizes(mc_samples=mc_samples, chunk_size=chunk_size, batch_size=batch_size)
    check_estimator(estimator, mc_samples)
    check_key(key)
    fix = ", or raw ones with their normalization"
    inputs = checked_inputs(inputs, model.input_shape, raw=normalization is not None, fix=fix)
    shape, dtype = tuple(inputs.shape[1:]), np.dtype(inputs.dtype)
    n = len(inputs)
    if n == 0:
        raise JalError("`inputs`: the pool is empty; nothing to score")
    batch_size = min(batch_size, -(-n // chunk_size) * chunk_size)
    scores = np.empty(n, np.float32)
    score_batch = functools.partial(_score_batch, estimator=estimator, mc_samples=mc_samples, chunk_size=chunk_size)

    def collect(start, count, result):
        scores[start : start + count] = np.asarray(result)[:count]

    pending = None
    for start in range(0, n, batch_size):
        batch = np.asarray(inputs[start : start + batch_size])
        check_finite(batch, offset=start)  # batch by batch: a memmap is read once
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *shape), dtype)])
        # Dispatch is asynchronous: the device scores this batch while the host copies
        # out the previous result and reads the next batch.
        result = score_batch(model, params, batch, start, key, normalization)
        if pending is not None:
            collect(*pending)
        pending = (start, count, result)
    collect(*pending)
    return scores
