"""Choosing which unlabeled pool samples to label next."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jal.estimators import ESTIMATORS

METHODS = (*ESTIMATORS, "random")


def top_k_unlabeled(scores: jax.Array, labeled: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k highest-scoring unlabeled samples.

    Ties go to the lower index (`lax.top_k` is stable), so the choice is deterministic.
    A NaN score ranks below every number but above every labeled sample, so labeled
    samples can never be chosen while k <= the number of unlabeled samples, which the
    caller checks.

    Args:
      scores: [P] float scores of every pool sample.
      labeled: [P] bool, True where already labeled.
      k: how many to choose (static).

    Returns:
      indices [k] int32 into the pool, best first, and their scores [k].
    """
    lowest = jnp.finfo(scores.dtype).min
    masked = jnp.where(labeled, -jnp.inf, jnp.where(jnp.isnan(scores), lowest, scores))
    _, indices = jax.lax.top_k(masked, k)
    return indices, scores[indices]


def random_scores(key: jax.Array, pool_size: int) -> jax.Array:
    """i.i.d. uniform scores: top-k of them is a uniformly random k-subset."""
    return jax.random.uniform(key, (pool_size,))
