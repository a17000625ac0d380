"""Fixed-size chunks: memory bounded by one chunk's work, and one shape for the compiler; the chunk size per backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# MC scoring's inputs per chunk where `chunk_size` is "auto". On the CPU, 32: a chunk's
# activations stay in cache (`benchmarks/RESULTS.md`: 16 and 32 the fastest measured, 64
# about 30% slower). A GPU or TPU runs each chunk as one step of a sequential loop, and
# 32 inputs leave it mostly idle between steps; 1,024 (32,768 forward passes at K = 32,
# the PyTorch reference's batch) score the reference's 10,000-image pool in 10 steps, in
# about 1.1 GB for LeNet-5 (2.6 GB for the cnn on 32x32x3 images; 13 GB for LeNet-5's
# generic vmapped scorer: XLA's buffers, `jal.resources.compiled_bytes_per_input`), where
# twice that would crowd a 16 GB TPU chip. `benchmarks/device.py` measures the chunk
# sizes around it on the device.
CPU_CHUNK_SIZE = 32
ACCELERATOR_CHUNK_SIZE = 1024


def default_chunk_size() -> int:
    """The scoring chunk size for this process's backend: 32 on the CPU, 1,024 on GPU and TPU."""
    return CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_SIZE


def resolve_chunk_size(chunk_size):
    """`chunk_size` as it applies here: "auto" becomes `default_chunk_size()`; anything else is kept, to be checked."""
    return default_chunk_size() if isinstance(chunk_size, str) and chunk_size == "auto" else chunk_size


def pad_to_chunks(inputs: jax.Array, chunk_size: int) -> jax.Array:
    """[N, ...] -> [ceil(N / chunk_size), chunk_size, ...], zero-padded at the end."""
    num_chunks = -(-inputs.shape[0] // chunk_size)
    pad = [(0, num_chunks * chunk_size - inputs.shape[0])] + [(0, 0)] * (inputs.ndim - 1)
    return jnp.pad(inputs, pad).reshape(num_chunks, chunk_size, *inputs.shape[1:])


def from_chunks(outputs: jax.Array, n: int) -> jax.Array:
    """Inverse of `pad_to_chunks` for per-input outputs [num_chunks, chunk_size, ...] -> [n, ...]."""
    return outputs.reshape(-1, *outputs.shape[2:])[:n]


def map_in_chunks(fn, inputs: jax.Array, chunk_size: int) -> jax.Array:
    """fn over `chunk_size` inputs at a time, so memory is bounded by one chunk's work.

    `fn` maps [chunk_size, ...] inputs to per-input outputs [chunk_size, ...]; the zero
    padding of the last chunk is dropped from the result.
    """
    return from_chunks(jax.lax.map(fn, pad_to_chunks(inputs, chunk_size)), inputs.shape[0])
