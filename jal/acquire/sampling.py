"""Choosing k unlabeled pool samples by their scores: top-k, or a stochastic draw.

A batch is the top k of the scores, or a stochastic draw from them (Kirsch et al.,
2023): k samples without replacement with probabilities proportional to

    power:    s_i ** (1 / T)       (PowerBALD when s is BALD)
    softmax:  exp(s_i / T)
    softrank: rank_i ** (-1 / T)   (rank 1 = the highest score)

drawn at once as the top k of log-probability + Gumbel noise. T -> 0 gives top-k,
T -> infinity a uniformly random batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jal.checks import check_key, check_sizes
from jal.errors import JalError

SAMPLINGS = ("topk", "power", "softmax", "softrank")


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
    chex.assert_rank(scores, 1)
    chex.assert_equal_shape([scores, labeled])
    check_sizes(k=k)
    if k > scores.shape[0]:
        raise JalError(f"`k` {k} exceeds the pool of {scores.shape[0]}; choose at most that many")
    lowest = jnp.finfo(scores.dtype).min
    masked = jnp.where(labeled, -jnp.inf, jnp.where(jnp.isnan(scores), lowest, scores))
    _, indices = jax.lax.top_k(masked, k)
    return indices, scores[indices]


def random_scores(key: jax.Array, pool_size: int) -> jax.Array:
    """i.i.d. uniform scores: top-k of them is a uniformly random k-subset."""
    check_key(key)
    check_sizes(pool_size=pool_size)
    return jax.random.uniform(key, (pool_size,))


def sampling_log_weights(scores: jax.Array, labeled: jax.Array, sampling: str, temperature: float) -> jax.Array:
    """log of the unnormalised probabilities [P] with which `sampling` draws each sample.

    Args:
      scores: [P] scores; for "power" they should be non-negative (negatives count as 0).
      labeled: [P] bool; labeled samples do not count in the ranks of "softrank".
      sampling: "power", "softmax" or "softrank".
      temperature: T > 0.
    """
    coldness = 1.0 / temperature
    finite = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    if sampling == "power":
        tiny = jnp.finfo(scores.dtype).tiny  # a zero score gets the least weight, not -inf
        log_weights = coldness * jnp.log(jnp.maximum(finite, tiny))
    elif sampling == "softmax":
        log_weights = coldness * (finite - jnp.max(jnp.where(labeled, -jnp.inf, finite)))
    elif sampling == "softrank":
        order = jnp.argsort(-jnp.where(labeled, -jnp.inf, finite), stable=True)
        ranks = jnp.empty_like(order).at[order].set(jnp.arange(1, order.shape[0] + 1))
        log_weights = -coldness * jnp.log(ranks.astype(scores.dtype))
    else:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS[1:])}")
    # Finite, so that even the least likely unlabeled sample outranks every labeled one.
    bound = jnp.finfo(scores.dtype).max / 4
    return jnp.clip(log_weights, -bound, bound)


def choose(
    key: jax.Array, scores: jax.Array, labeled: jax.Array, k: int, *, sampling: str = "topk", temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """k unlabeled samples: the top k of `scores`, or a stochastic draw from them.

    Args:
      key: PRNG key of the draw (unused for "topk").
      scores: [P] scores, higher is more informative.
      labeled: [P] bool, True where already labeled.
      k: batch size (static).
      sampling: one of SAMPLINGS.
      temperature: T >= 0 of a stochastic draw; T = 0 is top-k.

    Returns:
      indices [k] into the pool, and their scores [k].
    """
    if sampling not in SAMPLINGS:
        raise JalError(f"unknown `sampling` {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if not temperature >= 0:
        raise JalError(f"`temperature` {temperature} must be >= 0")
    if sampling == "topk" or temperature == 0:
        return top_k_unlabeled(scores, labeled, k)
    check_key(key)  # only a draw reads it
    log_weights = sampling_log_weights(scores, labeled, sampling, temperature)
    perturbed = log_weights + jax.random.gumbel(key, scores.shape, log_weights.dtype)
    indices, _ = top_k_unlabeled(perturbed, labeled, k)
    return indices, scores[indices]
