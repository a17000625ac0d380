"""Memory: what a run's settings need, checked against what the machine has before any work starts.

The estimate is of the largest buffers, one per setting that sizes it. Activations are
first bounded from above by every intermediate of one forward pass, as if none were
freed: cheap, and enough to pass any setting that fits easily. Only where that bound does
not fit does XLA compile the scoring and training steps for one and for eight inputs and
report their buffers, which extrapolate linearly; so a refused setting is one XLA itself
could not fit. An allocation XLA refuses later becomes the same one-line error
(`out_of_memory`).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import jax
import numpy as np

from jal.errors import JalError

FLOAT = 4  # bytes of a float32
# Per input of a streamed pool: its score on the host and the device, in the StepInfo and
# the written row; its label, order and labeled flag; its index (int64, two floats).
STREAMED_FLOATS = 8


def available_bytes() -> int:
    """Memory this process may still use: the accelerator's limit, else the host's (cgroup limits included)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    candidates = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        candidates.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:  # a container's cgroup (v2) limit, which /proc/meminfo does not show
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not candidates:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(candidates)


def activation_floats(model) -> int:
    """Floats of every intermediate value of one input's forward pass (an upper bound of what is live)."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    inputs = jax.ShapeDtypeStruct((1, *model.input_shape), np.float32)
    jaxpr = jax.make_jaxpr(model.log_probs)(params, inputs)
    return sum(math.prod(var.aval.shape) for eqn in jaxpr.eqns for var in eqn.outvars)


def compiled_bytes_per_input(model, *, mc_samples: int | None) -> int:
    """XLA's buffer bytes per input of MC scoring (`mc_samples`) or of a training gradient (None)."""
    params = jax.eval_shape(model.init, jax.random.key(0))

    def temp_bytes(batch: int) -> int:
        inputs = jax.ShapeDtypeStruct((batch, *model.input_shape), np.float32)
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
        if mc_samples is None:
            fn = jax.grad(lambda p, x, k: model.logits(p, x, k[0]).sum())
        else:
            fn = functools.partial(model.mc_log_probs, mc_samples=mc_samples)
        stats = jax.jit(fn).lower(params, inputs, keys).compile().memory_analysis()
        return stats.temp_size_in_bytes + stats.output_size_in_bytes

    return max(1, (temp_bytes(8) - temp_bytes(1)) // 7)


def loop_needs(config, *, pool_size: int, test_size: int, streamed: bool = False) -> dict[str, tuple[int, str]]:
    """The largest buffers of a run with `jal.loop.LoopConfig` `config`: setting -> (bytes, why).

    `streamed`: the pool's inputs stay on the host (`jal.streamed`); per pool input, only
    STREAMED_FLOATS of scores, labels and indices are held.
    """
    model, k, chunk = config.model, config.mc_samples, config.scoring_chunk_size
    classes, per_input = model.num_classes, math.prod(model.input_shape)
    activations = FLOAT * activation_floats(model)
    entry = config.acquisition_entry
    held = test_size if streamed else pool_size + test_size
    why = f"{held} inputs x ({per_input} floats twice + {k} x {classes} log-probabilities)"
    needs = {
        "pool_size": (
            FLOAT * (held * (2 * per_input + k * classes) + streamed * STREAMED_FLOATS * pool_size),
            why + (f" and {pool_size} x {STREAMED_FLOATS} floats of scores, labels and indices" if streamed else ""),
        ),
        "chunk_size": (chunk * k * activations, f"{chunk} inputs x {k} samples"),
        "batch_size": (3 * config.train.batch_size * activations, f"a training batch of {config.train.batch_size}"),
    }
    if entry.uses_targets:  # EPIG: a chunk of 256 pool inputs against every target, C^2 joint each
        needs["epig_targets"] = (
            FLOAT * config.epig_targets * (3 * 256 * classes**2 + k * classes),
            f"{config.epig_targets} targets x 256 inputs x {classes}^2 joint probabilities",
        )
    if entry.name == "batchbald":  # 64 candidates against M configurations
        needs["joint_samples"] = (
            FLOAT * config.joint_samples * (2 * 64 * classes + k),
            f"{config.joint_samples} configurations x 64 candidates x {classes} classes",
        )
    if sum(size for size, _ in needs.values()) > available_bytes():  # the bound does not fit: ask XLA
        needs["chunk_size"] = (
            chunk * compiled_bytes_per_input(model, mc_samples=k),
            needs["chunk_size"][1],
        )
        batch = config.train.batch_size
        needs["batch_size"] = (batch * compiled_bytes_per_input(model, mc_samples=None), needs["batch_size"][1])
    return needs


def check_fits(needs: dict[str, tuple[int, str]], available: int | None = None, *, streamable: bool = False) -> None:
    """Raises JalError naming the largest setting when the buffers together exceed the memory available.

    `streamable`: the run could keep its pool on the host (`jal.streamed`); where the pool
    is what does not fit, the message says so.
    """
    available = available_bytes() if available is None else available
    total = sum(size for size, _ in needs.values())
    if total <= available:
        return
    setting, (size, why) = max(needs.items(), key=lambda item: item[1][0])
    stream = ", or keep the pool on the host with `stream`" if streamable and setting == "pool_size" else ""
    raise JalError(
        f"`{setting}` needs {_gb(size)} of memory ({why}), {_gb(total)} in all, and {_gb(available)} is free; "
        f"lower `{setting}`{stream}"
    )


def out_of_memory(error: BaseException) -> JalError | None:
    """A one-line JalError for an allocation XLA or numpy refused, else None."""
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return JalError(f"out of memory ({first}); lower `chunk_size`, `batch_size` or `pool_size`")
    return None


def _gb(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
