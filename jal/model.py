"""LeNet-5 with MC dropout, layer for layer the reference's PyTorch model.

conv 32@5x5 -> Dropout2d -> max-pool 2 -> ReLU -> conv 64@5x5 -> Dropout2d -> max-pool 2
-> ReLU -> flatten 1024 -> dense 128 -> dropout -> ReLU -> dense 10.

Dropout is applied through explicit masks (`DropoutMasks`) rather than Flax's rng
streams, so that the direct forward, the factorised MC forward (`jal.scoring`) and the
tests can all be fed the very same masks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
DROPOUT_RATE = 0.5
CONV1_FEATURES, CONV2_FEATURES, FC1_FEATURES = 32, 64, 128
KERNEL = 5


class DropoutMasks(NamedTuple):
    """Multiplicative dropout masks with values in {0, 1 / (1 - rate)}.

    Leading dimensions are the batch: [N] for training, [N, K] for K MC samples.
    Dropout2d drops whole channels, so the conv masks have one entry per channel.
    """

    conv1: jax.Array  # [..., 32]
    conv2: jax.Array  # [..., 64]
    fc1: jax.Array  # [..., 128]


MASK_UNITS = CONV1_FEATURES + CONV2_FEATURES + FC1_FEATURES  # 224 = 7 words of 32 bits


def sample_masks(key: jax.Array, batch_shape: tuple[int, ...]) -> DropoutMasks:
    """Draws independent dropout masks for every sample (and MC sample) in `batch_shape`.

    With rate 1/2 every mask entry is one fair random bit, so a forward pass needs seven
    32-bit random words (224 bits) rather than 224 random floats: mask generation is 32x
    cheaper than `jax.random.bernoulli`, which matters for MC scoring.
    """
    assert DROPOUT_RATE == 0.5
    words = jax.random.bits(key, (*batch_shape, MASK_UNITS // 32), jnp.uint32)
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    masks = bits.reshape(*batch_shape, MASK_UNITS).astype(jnp.float32) * 2.0
    conv1_end, conv2_end = CONV1_FEATURES, CONV1_FEATURES + CONV2_FEATURES
    return DropoutMasks(masks[..., :conv1_end], masks[..., conv1_end:conv2_end], masks[..., conv2_end:])


def torch_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default for Conv2d and Linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init, which depends on the layer's fan-in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def image_patches(x: jax.Array, size: int) -> jax.Array:
    """[N, H, W, C] -> [N, H-size+1, W-size+1, size*size*C] valid patches, ordered (i, j, c).

    Built from size*size shifted slices: on XLA:CPU the gradient of this plus one matmul
    is an order of magnitude faster than the gradient of `lax.conv_general_dilated`.
    """
    h, w = x.shape[-3] - size + 1, x.shape[-2] - size + 1
    return jnp.concatenate([x[..., i : i + h, j : j + w, :] for i in range(size) for j in range(size)], axis=-1)


def im2col_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None, **_):
    """A drop-in for `lax.conv_general_dilated` (NHWC, HWIO) for stride-1 VALID convs."""
    assert tuple(window_strides) == (1, 1), "im2col_conv supports stride 1 only"
    assert padding == "VALID" or tuple(map(tuple, padding)) == ((0, 0), (0, 0)), "im2col_conv supports VALID only"
    assert lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)), "no dilation"
    kh, kw, cin, cout = rhs.shape
    assert kh == kw
    return image_patches(lhs, kh) @ rhs.reshape(kh * kw * cin, cout)


CONVS = ("native", "im2col", "xla")  # and "auto": `default_conv()`


def default_conv() -> str:
    """The convolution that trains fastest on this backend (measured).

    On CPU the native conv2 kernel where it builds (`jal.native`), else im2col; XLA's
    library convolution on GPU and TPU.
    """
    if jax.default_backend() != "cpu":
        return "xla"
    import jal.native  # jal.native imports this module

    return "native" if jal.native.available() else "im2col"


def resolve_conv(conv: str) -> str:
    """One of `CONVS`: `conv` itself, or `default_conv()` for "auto"."""
    if conv == "auto":
        return default_conv()
    if conv not in CONVS:
        raise ValueError(f"unknown conv {conv!r}; choose auto or one of {', '.join(CONVS)}")
    return conv


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, of [..., H, W, C] (H and W even) as a reshape and a max."""
    *lead, h, w, c = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2, c).max(axis=(-4, -2))


def _windows(x: jax.Array) -> jax.Array:
    """[..., H, W] -> [..., H/2, 2, W/2, 2]: the 2x2 pooling windows."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2)


@jax.custom_vjp
def max_pool_2x2_hw(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, over the last two axes [..., H, W] (H and W even).

    Its gradient goes to the first maximum of each window in row-major order, as in
    PyTorch. XLA's own gradient of a max shares it among ties, which costs a count of the
    ties per window: measured, that reduction took a tenth of a training step on XLA:CPU.
    """
    return _windows(x).max(axis=(-3, -1))


def _max_pool_forward(x):
    pooled = max_pool_2x2_hw(x)
    return pooled, (x, pooled)


def _max_pool_backward(residuals, grad):
    x, pooled = residuals
    windows = _windows(x)
    taken = jnp.zeros(pooled.shape, bool)
    grads = []
    for i in range(2):
        for j in range(2):
            first = (windows[..., :, i, :, j] == pooled) & ~taken
            grads.append(jnp.where(first, grad, 0.0))
            taken |= first
    # [..., H/2, W/2] x (i, j) -> [..., H/2, 2, W/2, 2] -> [..., H, W]
    rows = [jnp.stack(grads[2 * i : 2 * i + 2], axis=-1) for i in range(2)]
    return (jnp.stack(rows, axis=-3).reshape(x.shape),)


max_pool_2x2_hw.defvjp(_max_pool_forward, _max_pool_backward)


def masked_conv2_xla(z: jax.Array, conv1_mask: jax.Array, kernel: jax.Array, conv2_mask: jax.Array) -> jax.Array:
    """conv2 (no bias) of channel-major conv1 features z [32, N, 12, 12] under the conv1 mask [N, 32].

    Returns [N, 64, 8, 8], zeroed on the channels the conv2 mask [N, 64] drops (they are
    multiplied by zero after max-pool and ReLU anyway). XLA ops; `jal.native.masked_conv2`
    computes the same on the CPU, skipping every dropped channel.
    """
    masked = z * conv1_mask.T[:, :, None, None]
    out = jax.lax.conv_general_dilated(masked, kernel, (1, 1), "VALID", dimension_numbers=("CNHW", "HWIO", "NCHW"))
    return out * (conv2_mask != 0)[:, :, None, None]


def channel_major_logits(params, images: jax.Array, masks: DropoutMasks, conv2=masked_conv2_xla) -> jax.Array:
    """LeNet's logits [N, 10] with dropout, laid out for training on the CPU; the same function as `LeNet`.

    conv1 is one matmul [32, 25] x [25, N*24*24] whose output is channel-major over the
    batch ([32, N, 24, 24]): its weight gradient is then a plain matmul too (XLA:CPU ran the
    im2col layout's transposed one at 9 GFLOP/s). `conv2` is `masked_conv2_xla` or the
    native kernel that computes the same.
    """
    c1, c2, fc1, fc2 = (params[name] for name in ("conv1", "conv2", "fc1", "fc2"))
    side = images.shape[1] - KERNEL + 1
    patches = jnp.stack([images[:, i : i + side, j : j + side, 0] for i in range(KERNEL) for j in range(KERNEL)])
    h1 = c1["kernel"].reshape(KERNEL * KERNEL, -1).T @ patches.reshape(KERNEL * KERNEL, -1)
    h1 = h1.reshape(-1, *patches.shape[1:]) + c1["bias"][:, None, None, None]  # [32, N, 24, 24]
    z1 = jax.nn.relu(max_pool_2x2_hw(h1))  # its mask is applied inside conv2
    h2 = conv2(z1, masks.conv1, c2["kernel"], masks.conv2) + c2["bias"][:, None, None]  # [N, 64, 8, 8]
    z2 = jax.nn.relu(max_pool_2x2_hw(h2)) * masks.conv2[:, :, None, None]
    z2 = z2.transpose(0, 2, 3, 1).reshape(z2.shape[0], -1)  # fc1 reads (h, w, c) order
    h3 = jax.nn.relu((z2 @ fc1["kernel"] + fc1["bias"]) * masks.fc1)
    return h3 @ fc2["kernel"] + fc2["bias"]


class LeNet(nn.Module):
    """The reference LeNet-5. 184,586 parameters.

    Attributes:
      conv: how the two convolutions are computed (`CONVS`, or "auto"); all give the same
        function, they differ in speed per backend (`default_conv`). "native" changes
        training only (`jal.train.logits`); this module computes it as "im2col".
    """

    conv: str = "im2col"

    @nn.compact
    def __call__(self, x: jax.Array, masks: DropoutMasks | None = None) -> jax.Array:
        """Logits [N, 10] of images [N, 28, 28, 1]; dropout on when `masks` (batch [N]) is given."""
        conv_fn = {"native": im2col_conv, "im2col": im2col_conv, "xla": None}[resolve_conv(self.conv)]

        def conv(features, fan_in, name):
            return nn.Conv(
                features,
                (KERNEL, KERNEL),
                padding="VALID",
                kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(fan_in),
                conv_general_dilated=conv_fn,
                name=name,
            )

        def dense(features, fan_in, name):
            return nn.Dense(features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name=name)

        def drop(h, layer):
            if masks is None:
                return h
            mask = getattr(masks, layer)  # [N, C]; for conv outputs it broadcasts over H, W: Dropout2d
            return h * mask.reshape(mask.shape[:1] + (1,) * (h.ndim - 2) + mask.shape[1:])

        # The reference drops, then pools, then applies ReLU. A dropout mask is a
        # non-negative per-channel scale, which commutes exactly with max-pool and ReLU, so
        # it is applied last, on a quarter of the values (measured: training about 8% faster).
        x = conv(CONV1_FEATURES, KERNEL * KERNEL, "conv1")(x)
        x = drop(nn.relu(max_pool_2x2(x)), "conv1")
        x = conv(CONV2_FEATURES, KERNEL * KERNEL * CONV1_FEATURES, "conv2")(x)
        x = drop(nn.relu(max_pool_2x2(x)), "conv2")
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(drop(dense(FC1_FEATURES, 1024, "fc1")(x), "fc1"))
        return dense(NUM_CLASSES, FC1_FEATURES, "fc2")(x)


def init_params(key: jax.Array) -> dict:
    """Fresh parameters, initialised as PyTorch initialises the reference model."""
    return LeNet().init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def count_params(params) -> int:
    return sum(p.size for p in jax.tree_util.tree_leaves(params))


def params_from_torch(state_dict) -> dict:
    """LeNet parameters from the reference PyTorch model's state_dict (tensors or arrays).

    PyTorch stores conv kernels OIHW and linear weights [out, in], and flattens conv2's
    output in (C, H, W) order; this model uses HWIO, [in, out] and (H, W, C).
    """
    w = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, np.float32) for k, v in state_dict.items()}
    fc1 = w["fc1.weight"].reshape(FC1_FEATURES, CONV2_FEATURES, 4, 4).transpose(2, 3, 1, 0).reshape(-1, FC1_FEATURES)
    return {
        "conv1": {"kernel": w["conv1.weight"].transpose(2, 3, 1, 0), "bias": w["conv1.bias"]},
        "conv2": {"kernel": w["conv2.weight"].transpose(2, 3, 1, 0), "bias": w["conv2.bias"]},
        "fc1": {"kernel": fc1, "bias": w["fc1.bias"]},
        "fc2": {"kernel": w["fc2.weight"].T, "bias": w["fc2.bias"]},
    }


def params_to_torch(params) -> dict:
    """The inverse of `params_from_torch`: numpy arrays keyed as the PyTorch state_dict."""
    p = jax.tree_util.tree_map(np.asarray, params)
    fc1 = p["fc1"]["kernel"].reshape(4, 4, CONV2_FEATURES, FC1_FEATURES).transpose(3, 2, 0, 1).reshape(FC1_FEATURES, -1)
    return {
        "conv1.weight": p["conv1"]["kernel"].transpose(3, 2, 0, 1),
        "conv1.bias": p["conv1"]["bias"],
        "conv2.weight": p["conv2"]["kernel"].transpose(3, 2, 0, 1),
        "conv2.bias": p["conv2"]["bias"],
        "fc1.weight": fc1,
        "fc1.bias": p["fc1"]["bias"],
        "fc2.weight": p["fc2"]["kernel"].T,
        "fc2.bias": p["fc2"]["bias"],
    }
