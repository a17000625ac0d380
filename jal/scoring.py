"""MC-dropout log-probabilities [N, K, C]: K stochastic forward passes per input.

Two forwards compute the same function:

* `mc_log_probs_direct` runs the whole network once per MC sample (vmapped over masks).
* `mc_log_probs_factorised` is exact and about 10x cheaper. Dropout2d multiplies each
  conv1 channel c by m_c >= 0, which commutes with max-pool and ReLU, so conv2's input
  is m * z with z = relu(pool(conv1(x))) shared by every MC sample. conv2 is linear in
  its input channels: conv2(m * z) = b2 + sum_c m_c * (W2[..., c, :] conv z_c). The
  per-channel partial convolutions are computed once per input; each MC sample then
  costs one [32] x [32, 8*8*64] contraction instead of a full conv2. On CPU this conv2
  block runs as one fused native kernel (`jal.native`) where it can be built.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jal.native
from jal.data import normalize
from jal.errors import JalError
from jal.estimators import ESTIMATORS
from jal.model import KERNEL, DropoutMasks, LeNet, image_patches, max_pool_2x2, sample_masks

METHODS = ("factorised", "direct")  # the same function, computed two ways


def mc_log_probs_direct(params, images: jax.Array, masks: DropoutMasks, *, conv: str = "im2col") -> jax.Array:
    """log p(y | x, mask_k) [N, K, C] of images [N, 28, 28, 1] under masks with batch [N, K]."""

    def one_sample(masks_k):
        return jax.nn.log_softmax(LeNet(conv=conv).apply({"params": params}, images, masks_k))

    return jax.vmap(one_sample, in_axes=1, out_axes=1)(masks)


def conv2_block_xla(z: jax.Array, kernel: jax.Array, bias: jax.Array, masks: DropoutMasks) -> jax.Array:
    """conv2 -> max-pool -> bias -> ReLU -> conv2 mask of masked conv1 features z [N, 32, 12, 12], in XLA ops.

    Returns [N, K, 64 * 4 * 4] features ordered (channel, row, column); `jal.native.conv2_block`
    computes the same in one fused CPU kernel.
    """
    n = z.shape[0]
    cin, cout = kernel.shape[2:]  # conv2's input channels are conv1's outputs
    # Per-input-channel partial convolutions: a grouped conv with one group per input
    # channel, output channel c*64 + o reading input channel c. Channel-major (NCHW) is
    # measured fastest on XLA:CPU (1.7x the NHWC grouped conv, 1.2x an im2col batched
    # matmul), and it leaves each channel's partials contiguous for the contraction below.
    grouped_kernel = kernel.transpose(2, 3, 0, 1).reshape(cin * cout, 1, KERNEL, KERNEL)
    partials = jax.lax.conv_general_dilated(
        z, grouped_kernel, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=cin
    )  # [N, 32*64, 8, 8]
    side = partials.shape[-1]
    h2 = jnp.einsum("nkc,ncq->nkq", masks.conv1, partials.reshape(n, cin, -1))  # [N, K, 64*8*8], (o, h, w)
    pooled = h2.reshape(n, -1, cout, side // 2, 2, side // 2, 2).max(axis=(-3, -1))  # [N, K, 64, 4, 4]
    # Bias, ReLU and the conv2 mask (non-negative) all commute with max-pool, so they act
    # on the pooled features.
    z2 = jax.nn.relu(pooled + bias[:, None, None]) * masks.conv2[..., None, None]
    return z2.reshape(*z2.shape[:2], -1)


def conv1_features(params, images: jax.Array) -> jax.Array:
    """relu(pool(conv1(x))) [N, 32, 12, 12] (channel-major) of images [N, 28, 28, 1]: the same for every MC sample."""
    c1 = params["conv1"]
    h1 = image_patches(images, KERNEL) @ c1["kernel"].reshape(KERNEL * KERNEL, -1) + c1["bias"]  # [N, 24, 24, 32]
    return jax.nn.relu(max_pool_2x2(h1)).transpose(0, 3, 1, 2)


def mc_head(params, features: jax.Array, masks: DropoutMasks) -> jax.Array:
    """log p(y | x, mask_k) [N, K, C] from the conv2 block's [N, K, 1024] (channel, row, column) features."""
    fc1, fc2 = params["fc1"], params["fc2"]
    # fc1 reads (h, w, c)-flattened features; reorder its rows to the (c, h, w) order here.
    channels, width = params["conv2"]["kernel"].shape[-1], fc1["kernel"].shape[-1]
    fc1_kernel = fc1["kernel"].reshape(-1, channels, width).transpose(1, 0, 2).reshape(-1, width)
    h3 = jax.nn.relu((features @ fc1_kernel + fc1["bias"]) * masks.fc1)
    return jax.nn.log_softmax(h3 @ fc2["kernel"] + fc2["bias"])


def mc_log_probs_factorised(params, images: jax.Array, masks: DropoutMasks, *, native: bool = True) -> jax.Array:
    """The same as `mc_log_probs_direct`, computed through conv2's per-channel partials.

    With `native` (and `jal.native.available()`), the conv2 block runs as the fused native
    kernel when the computation is compiled for the CPU, and as XLA ops elsewhere.
    """
    z = conv1_features(params, images)
    conv2_args = (z, params["conv2"]["kernel"], params["conv2"]["bias"], masks)
    if native and z.dtype == jnp.float32 and jal.native.available():
        features = jax.lax.platform_dependent(*conv2_args, cpu=jal.native.conv2_block, default=conv2_block_xla)
    else:
        features = conv2_block_xla(*conv2_args)
    return mc_head(params, features, masks)


def pad_to_chunks(images: jax.Array, chunk_size: int) -> jax.Array:
    """[N, ...] -> [ceil(N / chunk_size), chunk_size, ...], zero-padded at the end."""
    num_chunks = -(-images.shape[0] // chunk_size)
    pad = [(0, num_chunks * chunk_size - images.shape[0])] + [(0, 0)] * (images.ndim - 1)
    return jnp.pad(images, pad).reshape(num_chunks, chunk_size, *images.shape[1:])


def from_chunks(outputs: jax.Array, n: int) -> jax.Array:
    """Inverse of `pad_to_chunks` for per-input outputs [num_chunks, chunk_size, ...] -> [n, ...]."""
    return outputs.reshape(-1, *outputs.shape[2:])[:n]


def map_in_chunks(fn, inputs: jax.Array, chunk_size: int) -> jax.Array:
    """fn over `chunk_size` inputs at a time, so memory is bounded by one chunk's work.

    `fn` maps [chunk_size, ...] inputs to per-input outputs [chunk_size, ...]; the zero
    padding of the last chunk is dropped from the result.
    """
    return from_chunks(jax.lax.map(fn, pad_to_chunks(inputs, chunk_size)), inputs.shape[0])


@functools.partial(jax.jit, static_argnames=("num_samples", "chunk_size", "method", "conv", "consistent", "native"))
def mc_log_probs(
    params,
    images: jax.Array,
    *,
    key: jax.Array,
    num_samples: int = 32,
    chunk_size: int = 32,
    method: str = "factorised",
    conv: str = "im2col",
    offset: int | jax.Array = 0,
    consistent: bool = False,
    native: bool = True,
) -> jax.Array:
    """MC-dropout log-probabilities of a device-resident set of images, chunk by chunk.

    By default every input gets its own independent masks for every MC sample, as the
    reference's K forward passes in train mode give it: input i's masks come from
    fold_in(key, offset + i), so the scores do not depend on the chunking. With
    `consistent=True` every input shares the same K masks, drawn from `key` alone: K
    fixed networks, which joint quantities over several inputs (BatchBALD, EPIG) need.
    Memory is bounded by `chunk_size`.

    Args:
      params: LeNet parameters.
      images: [N, 28, 28, 1] float32, normalised.
      key: PRNG key for the dropout masks.
      num_samples: K, the number of MC-dropout samples.
      chunk_size: inputs per chunk.
      method: "factorised" (default, exact and fast) or "direct".
      conv: the convolution of the direct method (`jal.model.default_conv`).
      offset: the position of images[0] in a larger array scored piece by piece.
      consistent: the same K masks for every input (consistent MC dropout).
      native: let the factorised method use the fused CPU kernel (`jal.native`) where it
        is available; False computes it in XLA ops only.

    Returns:
      [N, K, 10] float32 log-probabilities.
    """
    chunks = pad_to_chunks(images, chunk_size)
    forward = {
        "factorised": functools.partial(mc_log_probs_factorised, native=native),
        "direct": functools.partial(mc_log_probs_direct, conv=conv),
    }[method]

    def score_chunk(args):
        index, chunk = args
        if consistent:
            shared = sample_masks(key, (num_samples,))
            masks = jax.tree.map(lambda m: jnp.broadcast_to(m, (chunk_size, *m.shape)), shared)
        else:
            positions = offset + index * chunk_size + jnp.arange(chunk_size)
            masks = jax.vmap(lambda i: sample_masks(jax.random.fold_in(key, i), (num_samples,)))(positions)
        return forward(params, chunk, masks)

    return from_chunks(jax.lax.map(score_chunk, (jnp.arange(chunks.shape[0]), chunks)), images.shape[0])


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def deterministic_log_probs(params, images: jax.Array, *, chunk_size: int = 1024) -> jax.Array:
    """log p(y | x) [N, C] with dropout off (eval mode), chunked like `mc_log_probs`."""
    forward = lambda chunk: jax.nn.log_softmax(LeNet().apply({"params": params}, chunk))  # noqa: E731
    return map_in_chunks(forward, images, chunk_size)


@functools.partial(jax.jit, static_argnames=("method", "num_samples", "chunk_size"))
def _score_batch(params, images, offset, key, *, method: str, num_samples: int, chunk_size: int) -> jax.Array:
    if images.dtype == jnp.uint8:  # raw MNIST bytes: normalise on the device
        images = normalize(images)
    log_probs = mc_log_probs(params, images, key=key, num_samples=num_samples, chunk_size=chunk_size, offset=offset)
    return ESTIMATORS[method](log_probs)


def score_pool(
    params,
    images,
    *,
    key: jax.Array,
    method: str = "bald",
    num_samples: int = 32,
    chunk_size: int = 32,
    batch_size: int = 8192,
) -> np.ndarray:
    """One score per image of a pool of any size, streamed from host memory.

    The pool is read `batch_size` images at a time (a numpy memmap is read lazily), so
    host and device memory stay bounded whatever its size; every batch has the same
    shape (the last is padded), so nothing recompiles, and the host reads the next batch
    while the device scores the current one. The scores equal those of `mc_log_probs` on
    the whole pool at once.

    Args:
      params: LeNet parameters.
      images: array-like [N, 28, 28] uint8 (raw MNIST bytes) or [N, 28, 28, 1] float32
        (normalised).
      key: PRNG key for the dropout masks.
      method: an estimator of `jal.estimators.ESTIMATORS`.
      num_samples: K.
      chunk_size: inputs per device chunk.
      batch_size: images per host-to-device transfer.

    Returns:
      float32 [N] scores.
    """
    if method not in ESTIMATORS:
        raise JalError(f"unknown method {method!r}; choose one of {', '.join(ESTIMATORS)}")
    shape, dtype = tuple(images.shape[1:]), np.dtype(images.dtype)
    if not ((dtype == np.uint8 and shape == (28, 28)) or (dtype == np.float32 and shape == (28, 28, 1))):
        raise JalError(f"images of {dtype} {shape}: expected uint8 [N, 28, 28] or float32 [N, 28, 28, 1]")
    n = len(images)
    if n == 0:
        raise JalError("the pool is empty; nothing to score")
    batch_size = min(batch_size, -(-n // chunk_size) * chunk_size)
    scores = np.empty(n, np.float32)

    def collect(start, count, result):
        scores[start : start + count] = np.asarray(result)[:count]

    pending = None
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start : start + batch_size])
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *shape), dtype)])
        # Dispatch is asynchronous: the device scores this batch while the host copies
        # out the previous result and reads the next batch.
        result = _score_batch(params, batch, start, key, method=method, num_samples=num_samples, chunk_size=chunk_size)
        if pending is not None:
            collect(*pending)
        pending = (start, count, result)
    collect(*pending)
    return scores
