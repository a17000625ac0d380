"""Fixed-size chunks: memory bounded by one chunk's work, and one shape for the compiler."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
