"""A native CPU kernel for the factorised scorer's conv2 block, built on first use.

XLA:CPU runs the factorised forward's two short contractions (conv2's per-channel
partials and the mask product) at about a tenth of its large-matmul rate, because each
writes its whole output to memory. `mc_conv2.cc` fuses them with max-pool, bias, ReLU and
the conv2 mask, keeping one output channel's partials in L1, and uses the masks as bits
(subset sums instead of multiply-adds). It is called through XLA's FFI, so it runs inside
jit like any other op.

The kernel is compiled for the host CPU (`-march=native`) with the system's C++ compiler
the first time it is needed, and cached under `$JAL_CACHE_DIR` (default
`~/.cache/jal`), keyed by the source, the compiler, jaxlib and the CPU. Where there is no
compiler, the build fails, or `JAL_NATIVE=0` is set, `available()` is False and the scorer
uses XLA ops instead: the same function, slower on CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
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


def _cpu_identity() -> str:
    """What `-march=native` compiles for: a binary built on one CPU may not run on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jal"
    return Path(os.environ.get("JAL_CACHE_DIR", default))


def _build(compiler: str) -> Path:
    """Compiles the kernel into the cache (once per source, compiler, jaxlib and CPU); returns the library."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = "\n".join([SOURCE.read_text(), compiler, version, jax.__version__, *FLAGS, _cpu_identity()])
    library = _cache_dir() / f"mc_conv2-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Build to a temporary name and rename: concurrent builds never see a partial file.
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            built = Path(tmp) / library.name
            command = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(built)]
            subprocess.run(command, capture_output=True, text=True, check=True)
            os.replace(built, library)
    return library


@functools.cache
def available() -> bool:
    """Whether the kernel is built and registered with XLA (building it if needed)."""
    if os.environ.get("JAL_NATIVE", "1") == "0":
        return False
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        return False
    try:
        library = _build(compiler)
        handler = ctypes.cdll.LoadLibrary(str(library)).JalMcConv2
    except (OSError, AttributeError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        warnings.warn(f"jal: the native CPU kernel did not build, using XLA ops instead: {detail[-500:]}", stacklevel=2)
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def conv2_block(z: jax.Array, kernel: jax.Array, bias: jax.Array, masks: DropoutMasks) -> jax.Array:
    """conv2 -> max-pool -> bias -> ReLU -> conv2 mask of masked conv1 features, for every MC sample.

    Args:
      z: [N, 32, 12, 12] conv1's pooled, rectified output (before its dropout mask).
      kernel: conv2's [5, 5, 32, 64] kernel (HWIO); bias: its [64] bias.
      masks: dropout masks with batch [N, K], values in {0, 1 / (1 - rate)}.

    Returns:
      [N, K, 64 * 4 * 4] float32 features, ordered (channel, row, column).
    """
    assert available(), "call jal.native.available() first"
    n, k = masks.conv1.shape[:2]
    cin, cout = kernel.shape[2:]
    # The kernel takes the conv1 mask as bits and folds its scale into the weights: the
    # product by 2 is exact, so this is the same arithmetic as scaling the features.
    scaled = (kernel / (1.0 - DROPOUT_RATE)).transpose(2, 3, 0, 1).reshape(cin, cout, KERNEL * KERNEL)
    bits = jnp.sum((masks.conv1 > 0).astype(jnp.uint32) << jnp.arange(cin, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
    out = jax.ShapeDtypeStruct((n, k, cout * 16), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(z, scaled, bias, bits, masks.conv2)
