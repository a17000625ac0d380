"""EPIG (Bickford Smith et al., 2023): expected predictive information gain.

    EPIG(x) = E_{x* ~ p*(x*)} I(y; y* | x, x*)
            = E_{x*} KL[ p(y, y* | x, x*) || p(y | x) p(y* | x*) ],

the information a label at x gives about predictions at target inputs x*, rather than
about the parameters (BALD). With K consistent MC-dropout samples (the same K networks
for pool and targets), p(y, y*) = mean_k p_k(y | x) p_k(y* | x*).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from jal.acquire.estimators import mean_log_probs
from jal.checks import check_key, check_sizes
from jal.chunks import map_in_chunks


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def epig(log_probs: jax.Array, target_log_probs: jax.Array, *, chunk_size: int = 256) -> jax.Array:
    """EPIG of every pool input [N], averaged over the target inputs, in nats.

    Args:
      log_probs: [N, K, C] consistent MC log-probabilities of the pool.
      target_log_probs: [T, K, C] the same K networks' log-probabilities of the targets.
      chunk_size: pool inputs at once (memory: chunk_size * T * C^2 floats).

    Returns:
      [N] scores >= 0; 0 where all K samples agree.
    """
    chex.assert_rank([log_probs, target_log_probs], 3)
    check_sizes(chunk_size=chunk_size)  # static: checked once, while tracing
    chex.assert_equal_shape_suffix([log_probs, target_log_probs], 2)  # the same K networks, the same C
    num_samples = log_probs.shape[1]
    target_probs = jnp.exp(target_log_probs)  # [T, K, D]
    target_marginal = mean_log_probs(target_log_probs)  # [T, D]

    def chunk_scores(chunk):  # [B, K, C]
        joint = jnp.einsum("bkc,tkd->btcd", jnp.exp(chunk), target_probs) / num_samples
        independent = mean_log_probs(chunk)[:, None, :, None] + target_marginal[None, :, None, :]
        # 0 log 0 = 0: a zero joint (or marginal, which implies it) adds nothing.
        terms = jnp.where(joint > 0, joint * (jnp.log(jnp.where(joint > 0, joint, 1.0)) - independent), 0.0)
        return terms.sum(axis=(2, 3)).mean(axis=1)

    # A KL divergence is non-negative; rounding can leave it a hair below 0.
    return jnp.maximum(map_in_chunks(chunk_scores, log_probs, chunk_size), 0.0)


def sample_targets(key: jax.Array, pool_size: int, num_targets: int) -> jax.Array:
    """[num_targets] pool indices drawn uniformly with replacement: x* ~ the pool's inputs."""
    check_key(key)
    check_sizes(pool_size=pool_size, num_targets=num_targets)
    return jax.random.randint(key, (num_targets,), 0, pool_size)
