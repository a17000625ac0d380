"""LeNet-5 with MC dropout, layer for layer the reference's PyTorch model, and its exact fast forms.

conv 32@5x5 -> Dropout2d -> max-pool 2 -> ReLU -> conv 64@5x5 -> Dropout2d -> max-pool 2
-> ReLU -> flatten 1024 -> dense 128 -> dropout -> ReLU -> dense C.

Dropout is applied through explicit masks (`DropoutMasks`) rather than Flax's RNG
streams, so that every form of the forward, and the tests, can be fed the very same masks:

* training: XLA ops (im2col or library convolutions), or on the CPU a channel-major
  layout whose conv2 runs in a native kernel that skips the dropped channels;
* MC scoring, factorised (exact, about 10x cheaper than K forwards). Dropout2d
  multiplies each conv1 channel c by m_c >= 0, which commutes with max-pool and ReLU,
  so conv2's input is m * z with z = relu(pool(conv1(x))) shared by every MC sample.
  conv2 is linear in its input channels: conv2(m * z) = b2 + sum_c m_c * (W2[..., c, :]
  conv z_c). The per-channel partial convolutions are computed once per input; each MC
  sample then costs one [32] x [32, 8*8*64] contraction instead of a full conv2. On CPU
  this conv2 block runs as one fused native kernel (`jal.native`) where it builds;
* MC scoring, vmapped: the generic path of `jal.models.base.Model` (the forward vmapped
  over the K masks, conv1 computed once per input).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jal.native
from jal.errors import JalError
from jal.models.base import Model, Params
from jal.models.convs import check_conv, conv_general_dilated, image_patches, resolve_conv
from jal.models.dropout import unit_values

INPUT_SHAPE = (28, 28, 1)
DROPOUT_RATE = 0.5
CONV1_FEATURES, CONV2_FEATURES, FC1_FEATURES = 32, 64, 128
KERNEL = 5
SCORERS = ("factorised", "factorised_xla", "vmapped")  # the same function, computed three ways


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
    masks = unit_values(key, (*batch_shape, MASK_UNITS), bits=1).astype(jnp.float32) * 2.0
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


class LeNet(nn.Module):
    """The reference LeNet-5: 184,586 parameters with 10 classes.

    Attributes:
      num_classes: C.
      conv: how the two convolutions are computed ("im2col" or "xla"; "native" is
        training's channel-major form, `channel_major_logits`, and computes as "im2col" here).
    """

    num_classes: int = 10
    conv: str = "im2col"

    @nn.compact
    def __call__(self, x: jax.Array, masks: DropoutMasks | None = None) -> jax.Array:
        """Logits [N, C] of images [N, 28, 28, 1]; dropout on when `masks` (batch [N]) is given."""
        convolve = conv_general_dilated(self.conv)

        def conv(features, fan_in, name):
            return nn.Conv(
                features,
                (KERNEL, KERNEL),
                padding="VALID",
                kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(fan_in),
                conv_general_dilated=convolve,
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
        return dense(self.num_classes, FC1_FEATURES, "fc2")(x)


def init_params(key: jax.Array, num_classes: int = 10) -> dict:
    """Fresh parameters, initialised as PyTorch initialises the reference model."""
    return LeNet(num_classes).init(key, jnp.zeros((1, *INPUT_SHAPE), jnp.float32))["params"]


def count_params(params) -> int:
    return sum(p.size for p in jax.tree_util.tree_leaves(params))


# Training on the CPU: a channel-major layout, conv2 in XLA ops or the native kernel.


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
    """LeNet's logits [N, C] with dropout, laid out for training on the CPU; the same function as `LeNet`.

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


# MC scoring, factorised through conv2's per-channel partials.


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


def factorised_log_probs(params, images: jax.Array, masks: DropoutMasks, *, native: bool = True) -> jax.Array:
    """log p(y | x, mask_k) [N, K, C] of images [N, 28, 28, 1] under masks with batch [N, K].

    With `native` (and `jal.native.available()`), the conv2 block runs as the fused native
    kernel when the computation is compiled for the CPU, and as XLA ops elsewhere.
    """
    z = conv1_features(params, images)
    kernel, bias = params["conv2"]["kernel"], params["conv2"]["bias"]
    if native and z.dtype == jnp.float32 and jal.native.available():

        def native_block(z, kernel, bias, masks):
            return jal.native.conv2_block(z, kernel, bias, masks.conv1, masks.conv2, rate=DROPOUT_RATE)

        features = jax.lax.platform_dependent(z, kernel, bias, masks, cpu=native_block, default=conv2_block_xla)
    else:
        features = conv2_block_xla(z, kernel, bias, masks)
    return mc_head(params, features, masks)


@dataclasses.dataclass(frozen=True)
class LeNet5(Model):
    """The reference LeNet-5 as a `Model`, over 28x28 grayscale images.

    Attributes:
      conv: training's convolution: "auto" (the fastest here, `jal.models.convs`),
        "native", "im2col" or "xla"; all compute the same function.
      scorer: MC scoring's form: "factorised" (with the native CPU kernel where it
        builds), "factorised_xla" (XLA ops only) or "vmapped" (the generic path); all
        compute the same function under the same masks.
    """

    input_shape: tuple[int, ...] = INPUT_SHAPE
    num_classes: int = 10
    conv: str = "auto"
    scorer: str = "factorised"

    def __post_init__(self):
        if tuple(self.input_shape) != INPUT_SHAPE:
            shape = "x".join(map(str, self.input_shape))
            raise JalError(f"lenet5 takes 28x28x1 images, not {shape}; use `model` cnn or mlp")
        check_conv(self.conv)  # resolved where it is used: "auto" asks whether the native kernel builds
        if self.scorer not in SCORERS:
            raise JalError(f"unknown scorer {self.scorer!r}; choose one of {', '.join(SCORERS)}")

    def resolved_settings(self) -> dict:
        scorer = self.scorer
        if scorer == "factorised" and (jax.default_backend() != "cpu" or not jal.native.available()):
            scorer = "factorised_xla"  # what runs where the native kernel does not
        return {**self.settings, "conv": resolve_conv(self.conv, native=True), "scorer": scorer}

    def _module(self) -> LeNet:
        return LeNet(self.num_classes, conv=resolve_conv(self.conv, native=True))

    def init(self, key: jax.Array) -> Params:
        return init_params(key, self.num_classes)

    def logits(self, params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
        masks = sample_masks(key, (x.shape[0],))
        if resolve_conv(self.conv, native=True) != "native":
            return self.forward(params, x, masks)
        if jax.default_backend() != "cpu" or not jal.native.available():
            raise JalError(f"conv 'native' needs the native CPU kernel ({jax.default_backend()} here); use conv 'auto'")
        return channel_major_logits(params, x, masks, conv2=jal.native.masked_conv2)

    def forward(self, params: Params, x: jax.Array, noise: DropoutMasks | None) -> jax.Array:
        return self._module().apply({"params": params}, x, noise)

    def sample_noise(self, key: jax.Array, mc_samples: int) -> DropoutMasks:
        # [K, 1, units]: each of the K draws is the masks of a batch of one. Drawn at once for
        # the K samples, as the factorised scorer draws them, so both see the same masks.
        return jax.tree.map(lambda m: m[:, None], sample_masks(key, (mc_samples,)))

    def mc_log_probs(self, params: Params, x: jax.Array, keys: jax.Array, mc_samples: int) -> jax.Array:
        if self.scorer == "vmapped":
            return super().mc_log_probs(params, x, keys, mc_samples)
        if keys.ndim == 0:  # consistent: the same K masks for every input
            shared = sample_masks(keys, (mc_samples,))
            masks = jax.tree.map(lambda m: jnp.broadcast_to(m, (x.shape[0], *m.shape)), shared)
        else:
            masks = jax.vmap(lambda key: sample_masks(key, (mc_samples,)))(keys)
        return factorised_log_probs(params, x, masks, native=self.scorer == "factorised")


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
