"""Native CPU kernels for LeNet's conv2, built on first use.

Two kernels, one library:

* `conv2_block` (`mc_conv2.cc`): the factorised scorer's conv2 block under K MC-dropout
  masks, forward only.
* `masked_conv2` (`masked_conv2.cc`): conv2 in training under its two dropout masks, with
  its gradient, computing only the channels the masks keep (about a quarter of the
  multiply-adds).

XLA:CPU runs the factorised forward's two short contractions (conv2's per-channel
partials and the mask product) at about a tenth of its large-matmul rate, because each
writes its whole output to memory. `mc_conv2.cc` fuses them with max-pool, bias, ReLU and
the conv2 mask, keeping one output channel's partials in cache, and uses the masks as bits
(subset sums instead of multiply-adds). Both are called through XLA's FFI, so they run
inside jit like any other op.

The library is compiled for the host CPU (`-march=native`) with the system's C++ compiler
($CXX, else c++, g++ or clang++) the first time it is needed, and cached in
`$JAL_CACHE_DIR` (default `$XDG_CACHE_HOME/jal`, else `~/.cache/jal`), keyed by the
source, the compiler, jaxlib's FFI headers and the CPU; a failed build is remembered
under the same key, so it is tried once. Where there is no compiler, the build fails, or
`JAL_NATIVE=0` is set, `available()` is False and the scorer and training use XLA ops
instead: the same functions, slower on CPU. float32 only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

TARGETS = {  # XLA custom-call name: the library's handler symbol
    "jal_mc_conv2": "JalMcConv2",
    "jal_masked_conv2": "JalMaskedConv2",
    "jal_masked_conv2_grad": "JalMaskedConv2Grad",
}
SOURCES = tuple(Path(__file__).with_name(name) for name in ("mc_conv2.cc", "masked_conv2.cc"))
HEADER = Path(__file__).with_name("common.h")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300


def _cpu_identity() -> str:
    """What `-march=native` compiles for: a binary built on one CPU may not run on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))


def _cache_dir() -> Path:
    if "JAL_CACHE_DIR" in os.environ:
        return Path(os.environ["JAL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jal"


def compiler() -> list[str] | None:
    """The C++ compiler command to build with: $CXX (may carry arguments), else c++, g++ or clang++."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return [found] if found else None


def _build(command: list[str]) -> Path:
    """Compiles the kernels into the cache, once per key; returns the library, or raises with the compiler's output."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, timeout=BUILD_TIMEOUT_S)
    include = Path(jax.ffi.include_dir())
    headers = sorted((include / "xla" / "ffi" / "api").glob("*.h"))
    sources = [path.read_text() for path in (*SOURCES, HEADER, *headers)]
    key = "\n".join([*sources, *command, run([*command, "--version"]).stdout, *FLAGS, _cpu_identity()])
    library = _cache_dir() / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    failed = library.with_suffix(".failed")
    if failed.exists():
        raise RuntimeError(f"an earlier build failed (delete {failed} to retry): {failed.read_text()[-300:]}")
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Build to a temporary name and rename: concurrent builds never see a partial file.
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            built = Path(tmp) / library.name
            try:
                run([*command, *FLAGS, f"-I{include}", *map(str, SOURCES), "-o", str(built)])
            except subprocess.CalledProcessError as error:
                failed.write_text(error.stderr)
                raise
            os.replace(built, library)
    return library


@functools.cache
def available() -> bool:
    """Whether the kernels are built and registered with XLA (building them if needed)."""
    command = compiler()
    if os.environ.get("JAL_NATIVE", "1") == "0" or command is None:
        return False
    # Any failure (no jax.ffi in an old jax, a compiler error, a read-only cache, a
    # missing symbol) means the XLA ops run instead, which compute the same function.
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(command)))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except Exception as error:
        detail = getattr(error, "stderr", None) or f"{type(error).__name__}: {error}"
        message = f"jal: the native CPU kernels are unavailable, using XLA ops instead: {detail[-500:]}"
        warnings.warn(message, stacklevel=2)
        return False
    return True


def conv2_block(
    z: jax.Array, kernel: jax.Array, bias: jax.Array, conv1_mask: jax.Array, conv2_mask: jax.Array, *, rate: float
) -> jax.Array:
    """conv2 -> max-pool -> bias -> ReLU -> conv2 mask of masked conv1 features, for every MC sample.

    Args:
      z: [N, 32, 12, 12] conv1's pooled, rectified output (before its dropout mask).
      kernel: conv2's [5, 5, 32, 64] kernel (HWIO); bias: its [64] bias.
      conv1_mask: [N, K, 32] and conv2_mask: [N, K, 64] dropout masks, values in
        {0, 1 / (1 - rate)}.
      rate: the dropout rate of the masks.

    All float32 (`jal.models.lenet5` sends other dtypes to the XLA ops).

    Returns:
      [N, K, 64 * 4 * 4] float32 features, ordered (channel, row, column).
    """
    assert available(), "call jal.native.available() first"
    n, k = conv1_mask.shape[:2]
    size, _, cin, cout = kernel.shape
    pooled_side = (z.shape[-1] - size + 1) // 2
    # The kernel takes the conv1 mask as bits and folds its scale into the weights: the
    # product by 2 is exact, so this is the same arithmetic as scaling the features.
    scaled = (kernel / (1.0 - rate)).transpose(2, 3, 0, 1).reshape(cin, cout, size * size)
    bits = jnp.sum((conv1_mask > 0).astype(jnp.uint32) << jnp.arange(cin, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
    out = jax.ShapeDtypeStruct((n, k, cout * pooled_side**2), jnp.float32)
    # Under vmap, one call per element: correct, if not the fastest.
    return jax.ffi.ffi_call("jal_mc_conv2", out, vmap_method="sequential")(z, scaled, bias, bits, conv2_mask)


def _oihw_taps(kernel: jax.Array) -> jax.Array:
    """[5, 5, 32, 64] HWIO -> [64, 32, 25]: each (output, input) pair's taps contiguous."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], kernel.shape[2], -1)


@jax.custom_vjp
def masked_conv2(z: jax.Array, conv1_mask: jax.Array, kernel: jax.Array, conv2_mask: jax.Array) -> jax.Array:
    """conv2 (no bias) of the masked conv1 features, on the output channels the conv2 mask keeps.

    Computes `jal.models.lenet5.masked_conv2_xla`, skipping every channel a mask drops. CPU only.

    Args:
      z: [32, N, 12, 12] conv1's pooled, rectified output, channel-major over the batch.
      conv1_mask: [N, 32] its dropout mask; conv2_mask: [N, 64] conv2's.
      kernel: conv2's [5, 5, 32, 64] kernel (HWIO).

    Returns:
      [N, 64, 8, 8] float32; zero on the channels conv2_mask drops. Differentiable in z and
      kernel (the masks get zero cotangents).
    """
    assert available(), "call jal.native.available() first"
    size = kernel.shape[0]
    out = jax.ShapeDtypeStruct((z.shape[1], kernel.shape[3], z.shape[2] - size + 1, z.shape[3] - size + 1), z.dtype)
    call = jax.ffi.ffi_call("jal_masked_conv2", out, vmap_method="sequential")
    return call(z, conv1_mask, _oihw_taps(kernel), conv2_mask)


def _masked_conv2_forward(z, conv1_mask, kernel, conv2_mask):
    return masked_conv2(z, conv1_mask, kernel, conv2_mask), (z, conv1_mask, kernel, conv2_mask)


def _masked_conv2_backward(residuals, grad):
    z, conv1_mask, kernel, conv2_mask = residuals
    size, _, cin, cout = kernel.shape
    taps_by_input = kernel.reshape(-1, cin, cout).transpose(1, 0, 2)  # [32, 25, 64] for the input gradient
    outs = (jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct((cout, cin, size * size), z.dtype))
    z_grad, taps_grad = jax.ffi.ffi_call("jal_masked_conv2_grad", outs, vmap_method="sequential")(
        z, conv1_mask, _oihw_taps(kernel), taps_by_input, conv2_mask, grad
    )
    kernel_grad = taps_grad.reshape(cout, cin, size, size).transpose(2, 3, 1, 0)
    return z_grad, jnp.zeros_like(conv1_mask), kernel_grad, jnp.zeros_like(conv2_mask)


masked_conv2.defvjp(_masked_conv2_forward, _masked_conv2_backward)
