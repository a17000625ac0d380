"""A native CPU kernel for the factorised scorer's conv2 block, built on first use.

XLA:CPU runs the factorised forward's two short contractions (conv2's per-channel
partials and the mask product) at about a tenth of its large-matmul rate, because each
writes its whole output to memory. `mc_conv2.cc` fuses them with max-pool, bias, ReLU and
the conv2 mask, keeping one output channel's partials in cache, and uses the masks as bits
(subset sums instead of multiply-adds). It is called through XLA's FFI, so it runs inside
jit like any other op.

The kernel is compiled for the host CPU (`-march=native`) with the system's C++ compiler
($CXX, else c++, g++ or clang++) the first time it is needed, and cached in
`$JAL_CACHE_DIR` (default `$XDG_CACHE_HOME/jal`, else `~/.cache/jal`), keyed by the
source, the compiler, jaxlib's FFI headers and the CPU; a failed build is remembered
under the same key, so it is tried once. Where there is no compiler, the build fails, or
`JAL_NATIVE=0` is set, `available()` is False and the scorer uses XLA ops instead: the
same function, slower on CPU. The kernel computes forward values only (scoring never
differentiates), in float32.
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

from jal.model import DROPOUT_RATE, KERNEL, DropoutMasks

TARGET = "jal_mc_conv2"
SOURCE = Path(__file__).with_name("mc_conv2.cc")
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
    """Compiles the kernel into the cache, once per key; returns the library, or raises with the compiler's output."""
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, timeout=BUILD_TIMEOUT_S)
    include = Path(jax.ffi.include_dir())
    headers = sorted((include / "xla" / "ffi" / "api").glob("*.h"))
    key = "\n".join(
        [SOURCE.read_text(), *command, run([*command, "--version"]).stdout, *FLAGS, _cpu_identity()]
        + [header.read_text() for header in headers]
    )
    library = _cache_dir() / f"mc_conv2-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    failed = library.with_suffix(".failed")
    if failed.exists():
        raise RuntimeError(f"an earlier build failed (delete {failed} to retry): {failed.read_text()[-300:]}")
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Build to a temporary name and rename: concurrent builds never see a partial file.
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            built = Path(tmp) / library.name
            try:
                run([*command, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(built)])
            except subprocess.CalledProcessError as error:
                failed.write_text(error.stderr)
                raise
            os.replace(built, library)
    return library


@functools.cache
def available() -> bool:
    """Whether the kernel is built and registered with XLA (building it if needed)."""
    command = compiler()
    if os.environ.get("JAL_NATIVE", "1") == "0" or command is None:
        return False
    # Any failure (no jax.ffi in an old jax, a compiler error, a read-only cache, a
    # missing symbol) means the XLA ops run instead, which compute the same function.
    try:
        handler = ctypes.cdll.LoadLibrary(str(_build(command))).JalMcConv2
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    except Exception as error:
        detail = getattr(error, "stderr", None) or f"{type(error).__name__}: {error}"
        message = f"jal: the native CPU kernel is unavailable, using XLA ops instead: {detail[-500:]}"
        warnings.warn(message, stacklevel=2)
        return False
    return True


def conv2_block(z: jax.Array, kernel: jax.Array, bias: jax.Array, masks: DropoutMasks) -> jax.Array:
    """conv2 -> max-pool -> bias -> ReLU -> conv2 mask of masked conv1 features, for every MC sample.

    Args:
      z: [N, 32, 12, 12] conv1's pooled, rectified output (before its dropout mask).
      kernel: conv2's [5, 5, 32, 64] kernel (HWIO); bias: its [64] bias.
      masks: dropout masks with batch [N, K], values in {0, 1 / (1 - rate)}.

    All float32 (`mc_log_probs_factorised` sends other dtypes to the XLA ops).

    Returns:
      [N, K, 64 * 4 * 4] float32 features, ordered (channel, row, column).
    """
    assert available(), "call jal.native.available() first"
    n, k = masks.conv1.shape[:2]
    cin, cout = kernel.shape[2:]
    pooled_side = (z.shape[-1] - KERNEL + 1) // 2
    # The kernel takes the conv1 mask as bits and folds its scale into the weights: the
    # product by 2 is exact, so this is the same arithmetic as scaling the features.
    scaled = (kernel / (1.0 - DROPOUT_RATE)).transpose(2, 3, 0, 1).reshape(cin, cout, KERNEL * KERNEL)
    bits = jnp.sum((masks.conv1 > 0).astype(jnp.uint32) << jnp.arange(cin, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
    out = jax.ShapeDtypeStruct((n, k, cout * pooled_side**2), jnp.float32)
    # Under vmap, one call per element: correct, if not the fastest.
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(z, scaled, bias, bits, masks.conv2)
