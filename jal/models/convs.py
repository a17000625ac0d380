"""Which convolution to compute, per backend: the one place that chooses.

XLA:CPU computes the gradient of `lax.conv_general_dilated` an order of magnitude slower
than PyTorch (measured: 2.9 LeNet training steps/s against 53). The same convolution as
im2col (shifted slices, concatenated, times one weight matrix) trains at PyTorch's speed,
and LeNet's conv2 has a native CPU kernel (`jal.native`) that skips dropped channels. On
GPU and TPU the library convolution is the right one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jal.native
from jal.errors import JalError

CONVS = ("native", "im2col", "xla")  # and "auto": `default_conv`


def default_conv(*, native: bool) -> str:
    """The convolution that trains fastest on this backend (measured).

    On CPU, the native kernel where the model has one (`native`: LeNet-5) and it builds,
    else im2col; XLA's library convolution on GPU and TPU.
    """
    if jax.default_backend() != "cpu":
        return "xla"
    return "native" if native and jal.native.available() else "im2col"


def check_conv(conv: str) -> str:
    """`conv` if it names a convolution ("auto" or one of `CONVS`), else a JalError."""
    if conv != "auto" and conv not in CONVS:
        raise JalError(f"unknown conv {conv!r}; choose auto or one of {', '.join(CONVS)}")
    return conv


def resolve_conv(conv: str, *, native: bool) -> str:
    """One of `CONVS`: `conv` itself, or `default_conv(native=native)` for "auto"."""
    return default_conv(native=native) if check_conv(conv) == "auto" else conv


def image_patches(x: jax.Array, size: int) -> jax.Array:
    """[N, H, W, C] -> [N, H-size+1, W-size+1, size*size*C] valid patches, ordered (i, j, c).

    Built from size*size shifted slices: on XLA:CPU the gradient of this plus one matmul
    is an order of magnitude faster than the gradient of `lax.conv_general_dilated`.
    """
    h, w = x.shape[-3] - size + 1, x.shape[-2] - size + 1
    return jnp.concatenate([x[..., i : i + h, j : j + w, :] for i in range(size) for j in range(size)], axis=-1)


def im2col_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None, **_):
    """A drop-in for `lax.conv_general_dilated` (NHWC, HWIO) for stride-1 convolutions without dilation."""
    assert tuple(window_strides) == (1, 1), "im2col_conv supports stride 1 only"
    assert lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)), "no dilation"
    kh, kw, cin, cout = rhs.shape
    assert kh == kw, "square kernels only"
    if padding == "SAME":
        padding = [((kh - 1) // 2, kh // 2)] * 2
    if padding != "VALID":
        lhs = jnp.pad(lhs, [(0, 0), *map(tuple, padding), (0, 0)])
    return image_patches(lhs, kh) @ rhs.reshape(kh * kw * cin, cout)


def conv_general_dilated(conv: str):
    """The `conv_general_dilated` for `nn.Conv` that computes `conv` ("native" trains natively elsewhere)."""
    return {"native": im2col_conv, "im2col": im2col_conv, "xla": jax.lax.conv_general_dilated}[conv]
