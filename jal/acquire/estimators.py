"""Informativeness scores from MC log-probabilities [N, K, C]; higher means acquire first.

All work in log space: mean probabilities come from a logsumexp, and 0 log 0 = 0 is
taken explicitly, so no estimator returns NaN even when a probability underflows to 0.
A NaN input (a diverged model) stays NaN rather than passing for a score.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def mean_log_probs(log_probs: jax.Array) -> jax.Array:
    """log of the MC-mean predictive [N, C] = logsumexp_k log p_k - log K."""
    chex.assert_rank(log_probs, 3)  # [N, K, C]
    return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(log_probs.shape[1])


def entropy(log_probs: jax.Array) -> jax.Array:
    """Entropy over the last axis, in nats, with 0 log 0 = 0."""
    return -jnp.sum(jnp.where(jnp.isneginf(log_probs), 0.0, jnp.exp(log_probs) * log_probs), axis=-1)


def predictive_entropy(log_probs: jax.Array) -> jax.Array:
    """H[mean_k p_k] [N]."""
    return entropy(mean_log_probs(log_probs))


def expected_entropy(log_probs: jax.Array) -> jax.Array:
    """mean_k H[p_k] [N]."""
    chex.assert_rank(log_probs, 3)  # [N, K, C]
    return entropy(log_probs).mean(axis=1)


def bald(log_probs: jax.Array) -> jax.Array:
    """Mutual information between label and parameters [N]: H[mean p] - mean H[p].

    Non-negative by Jensen's inequality; rounding can make it a hair below 0, so it is
    clipped there.
    """
    return jnp.maximum(predictive_entropy(log_probs) - expected_entropy(log_probs), 0.0)


def least_confidence(log_probs: jax.Array) -> jax.Array:
    """1 - max_c mean_k p_k(c) [N]."""
    return 1.0 - jnp.exp(mean_log_probs(log_probs).max(axis=-1))


def margin(log_probs: jax.Array) -> jax.Array:
    """1 - (p_top1 - p_top2) of the mean predictive [N]: a small margin scores high."""
    top2 = jax.lax.top_k(jnp.exp(mean_log_probs(log_probs)), 2)[0]
    return 1.0 - (top2[..., 0] - top2[..., 1])


def variation_ratio(log_probs: jax.Array) -> jax.Array:
    """1 - (votes for the modal class) / K over the K MC argmax predictions [N]."""
    chex.assert_rank(log_probs, 3)  # [N, K, C]
    num_classes = log_probs.shape[-1]
    num_samples = log_probs.shape[1]
    votes = jax.nn.one_hot(log_probs.argmax(axis=-1), num_classes).sum(axis=1)
    # Exact counts over K: 1 - m / K can round (fused) to -1.5e-8 when all K samples agree.
    return (num_samples - votes.max(axis=-1)) / num_samples


def mean_std(log_probs: jax.Array) -> jax.Array:
    """Mean over classes of the standard deviation over MC samples of p_k(c) [N]."""
    chex.assert_rank(log_probs, 3)  # [N, K, C]
    return jnp.exp(log_probs).std(axis=1).mean(axis=-1)


ESTIMATORS = {
    "bald": bald,
    "entropy": predictive_entropy,
    "least_confidence": least_confidence,
    "margin": margin,
    "variation_ratio": variation_ratio,
    "mean_std": mean_std,
}


def accuracy_and_nll(log_probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Accuracy (a fraction) and mean NLL of the MC-mean predictive, as the reference computes them.

    Args:
      log_probs: [N, K, C] MC log-probabilities, or [N, C] from one deterministic pass.
      labels: [N] integer labels.
    """
    chex.assert_rank(labels, 1)
    chex.assert_equal(log_probs.shape[0], labels.shape[0])
    mean = mean_log_probs(log_probs) if log_probs.ndim == 3 else log_probs
    accuracy = (mean.argmax(axis=-1) == labels).mean()
    nll = -jnp.take_along_axis(mean, labels[:, None], axis=-1).mean()
    return accuracy, nll
