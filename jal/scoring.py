"""MC-dropout log-probabilities [N, K, C] of any `Model`, chunk by chunk, and pools of any size.

Every input gets its own dropout draws for every MC sample, as the reference's K forward
passes in train mode give it: input i's draws come from fold_in(key, offset + i), so its
scores depend on its position in the pool and not on how the pool is chunked, nor on
how many devices share it (`mesh`: inputs split over its devices, `jal.sharding`). With
`consistent=True` every input shares the same K draws, from `key` alone: K fixed networks,
which joint quantities over several inputs (BatchBALD, EPIG) need.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jal.acquire import check_estimator
from jal.acquire.estimators import ESTIMATORS
from jal.checks import check_finite, check_key, check_model, check_sizes, checked_inputs
from jal.chunks import from_chunks, map_in_chunks, pad_to_chunks, resolve_chunk_size
from jal.data.host import release
from jal.data.normalization import Normalization
from jal.errors import JalError
from jal.models import Model, Params
from jal.sharding import DATA, data_mesh, is_split, pad_rows, replicated


def mc_log_probs(
    model: Model,
    params: Params,
    inputs: jax.Array,
    *,
    key: jax.Array,
    mc_samples: int = 32,
    chunk_size: int | str = "auto",
    offset: int | jax.Array = 0,
    consistent: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
    """MC-dropout log-probabilities of a device-resident set of inputs; memory bounded by `chunk_size`.

    Args:
      model: the model (`jal.models`).
      params: its parameters.
      inputs: [N, *model.input_shape] normalised floats, without NaN or inf.
      key: PRNG key of the dropout draws.
      mc_samples: K.
      chunk_size: inputs per chunk; "auto": 32 on CPU, 1,024 on GPU and TPU (`jal.chunks`).
      offset: the position of inputs[0] in a larger array scored piece by piece.
      consistent: the same K draws for every input (consistent MC dropout).
      mesh: devices to split the inputs over (`jal.sharding.data_mesh`); None: one device.

    Returns:
      [N, K, C] float32 log-probabilities, the same bit for bit on any mesh.
    """
    check_model(model)
    chunk_size = resolve_chunk_size(chunk_size)
    check_sizes(mc_samples=mc_samples, chunk_size=chunk_size)
    check_key(key)
    inputs = checked_inputs(inputs, model.input_shape)
    check_finite(inputs)
    settings = dict(mc_samples=mc_samples, chunk_size=chunk_size, offset=offset, consistent=consistent, mesh=mesh)
    return _mc_log_probs(model, params, inputs, key=key, **settings)


@functools.partial(jax.jit, static_argnames=("model", "mc_samples", "chunk_size", "consistent", "mesh", "estimator"))
def _mc_log_probs(model, params, inputs, *, key, mc_samples, chunk_size, offset, consistent, mesh=None, estimator=None):
    """[N, K, C] log-probs, or with `estimator` each input's score [N], computed chunk by chunk."""
    settings = dict(mc_samples=mc_samples, chunk_size=chunk_size, consistent=consistent, estimator=estimator)
    if not is_split(mesh):
        return _chunked_mc_log_probs(model, params, inputs, key, offset, **settings)
    # Each device scores an equal run of whole chunks; the padding's scores are dropped.
    n = inputs.shape[0]
    per_device = -(-n // (mesh.size * chunk_size)) * chunk_size

    def on_device(params, inputs, key, offset):
        start = offset + jax.lax.axis_index(DATA) * per_device  # global positions: the same draws anywhere
        return _chunked_mc_log_probs(model, params, inputs, key, start, **settings)

    specs = (PartitionSpec(), PartitionSpec(DATA), PartitionSpec(), PartitionSpec())
    # check_vma off: the native kernels (custom calls) carry no varying-axis types.
    split = jax.shard_map(on_device, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(DATA), check_vma=False)
    return split(params, pad_rows(inputs, mesh.size * per_device), key, jnp.asarray(offset, jnp.int32))[:n]


def _chunked_mc_log_probs(model, params, inputs, key, offset, *, mc_samples, chunk_size, consistent, estimator):
    chunks = pad_to_chunks(inputs, chunk_size)

    def score_chunk(args):
        index, chunk = args
        if consistent:
            keys = key
        else:
            positions = offset + index * chunk_size + jnp.arange(chunk_size)
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(positions)
        log_probs = model.mc_log_probs(params, chunk, keys, mc_samples)
        # Scored within the chunk: the same computation, hence the same bits, on any mesh.
        if estimator is None:
            return log_probs
        return (ESTIMATORS[estimator] if isinstance(estimator, str) else estimator)(log_probs)

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


@functools.partial(jax.jit, static_argnames=("model", "estimator", "mc_samples", "chunk_size", "consistent", "mesh"))
def _score_batch(
    model, params, inputs, offset, key, normalization, *, estimator, mc_samples, chunk_size, consistent, mesh
):
    if normalization is not None:
        inputs = normalization.apply(inputs)  # raw values: normalised on the device
    settings = dict(mc_samples=mc_samples, chunk_size=chunk_size, offset=offset, consistent=consistent, mesh=mesh)
    # Whole on every device: each process of a run of several reads all the scores.
    return replicated(_mc_log_probs(model, params, inputs, key=key, estimator=estimator, **settings), mesh)


def score_pool(
    model: Model,
    params: Params,
    inputs,
    *,
    key: jax.Array,
    estimator: str | Callable[[jax.Array], jax.Array] = "bald",
    mc_samples: int = 32,
    chunk_size: int | str = "auto",
    batch_size: int = 8192,
    normalization: Normalization | None = None,
    consistent: bool = False,
    mesh: Mesh | None = None,
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
      estimator: one of `jal.acquire.estimators.ESTIMATORS`, or a jit-traceable function of
        log-probabilities [N, K, C] to scores [N] (one object for every call: it is compiled once).
      mc_samples: K.
      chunk_size: inputs per device chunk; "auto": 32 on CPU, 1,024 on GPU and TPU (`jal.chunks`).
      batch_size: inputs per host-to-device transfer.
      normalization: applied to each batch on the device (`jal.data.Normalization`).
      consistent: the same K dropout masks for every input (`mc_log_probs`).
      mesh: the devices each batch is split over (default: every device of this process).

    Returns:
      float32 [N] scores, the same bit for bit on any mesh.
    """
    check_model(model)
    chunk_size = resolve_chunk_size(chunk_size)
    check_sizes(mc_samples=mc_samples, chunk_size=chunk_size, batch_size=batch_size)
    if isinstance(estimator, str):
        check_estimator(estimator, mc_samples)
    check_key(key)
    fix = ", or raw ones with their normalization"
    inputs = checked_inputs(inputs, model.input_shape, raw=normalization is not None, fix=fix)
    shape, dtype = tuple(inputs.shape[1:]), np.dtype(inputs.dtype)
    n = len(inputs)
    if n == 0:
        raise JalError("`inputs`: the pool is empty; nothing to score")
    mesh = data_mesh(jax.local_devices()) if mesh is None else mesh
    unit = mesh.size * chunk_size  # a whole number of chunks for every device
    batch_size = min(-(-batch_size // unit), -(-n // unit)) * unit
    scores = np.empty(n, np.float32)
    settings = dict(estimator=estimator, mc_samples=mc_samples, chunk_size=chunk_size, consistent=consistent, mesh=mesh)
    score_batch = functools.partial(_score_batch, **settings)
    split = NamedSharding(mesh, PartitionSpec(DATA))

    def collect(start, count, result):
        scores[start : start + count] = np.asarray(result)[:count]

    def read(start: int, index: tuple) -> np.ndarray:
        """The rows of the batch at `start` that one device of this process holds, zero-padded past the pool."""
        first, stop = start + (index[0].start or 0), start + (index[0].stop or batch_size)
        rows = np.asarray(inputs[first:stop])
        release(inputs)  # a memmap's pages: one batch resident at a time (`jal.data.host`)
        check_finite(rows, offset=first)  # piece by piece: a memmap is read once
        return np.concatenate([rows, np.zeros((stop - first - len(rows), *shape), dtype)])

    pending = None
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        # Each process reads only its devices' rows. Dispatch is asynchronous: the device
        # scores this batch while the host copies out the previous result and reads the next.
        batch = jax.make_array_from_callback((batch_size, *shape), split, functools.partial(read, start))
        result = score_batch(model, params, batch, start, key, normalization)
        if pending is not None:
            collect(*pending)
        pending = (start, count, result)
    collect(*pending)
    return scores
