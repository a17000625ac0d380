"""BatchBALD (Kirsch et al., 2019): a batch chosen greedily to maximise the joint mutual information

    I(y_1, ..., y_b; w) = H(y_1, ..., y_b) - sum_i E_w H(y_i | w),

with the K MC-dropout samples as K equally weighted draws of w. They must be
consistent (the same K networks for every input: `mc_log_probs(..., consistent=True)`),
or the joint p(y_1, ..., y_n | w_k) means nothing.

The joint entropy of the batch so far plus one candidate needs p(y_1..n | w_k) for
configurations of the n chosen labels. While the C^n configurations fit in the budget of
`joint_samples` rows they are enumerated exactly; beyond that, `joint_samples`
configurations are drawn from the model (joint_samples // K from each w_k) and the entropy
is importance-weighted, as in the paper and batchbald_redux. Sampled rows are kept in
log space and rescaled by their largest entry, so long batches do not underflow.

Every candidate of the pool is scored at once, chunk by chunk, and the whole greedy loop
is one compiled function: the exact steps are unrolled (their sizes grow C-fold), the
sampled steps run in a `fori_loop` over fixed shapes.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jal.acquire.estimators import expected_entropy
from jal.checks import check_key, check_sizes
from jal.chunks import map_in_chunks


def exact_joint_probs(log_probs: jax.Array) -> jax.Array:
    """p(y_1..n = configuration m | w_k) [C^n, K] for every configuration of n labels.

    Args:
      log_probs: [n, K, C] consistent MC log-probabilities of n inputs.
    """
    joint = jnp.ones((1, log_probs.shape[1]), log_probs.dtype)
    for probs in jnp.exp(log_probs):  # [K, C]; configuration index m * C + c
        joint = (joint[:, None, :] * probs.T[None, :, :]).reshape(-1, joint.shape[1])
    return joint


def joint_entropy(log_probs: jax.Array) -> jax.Array:
    """H(y_1, ..., y_n) [] exactly, by enumerating all C^n configurations."""
    return -xlogy(mean := exact_joint_probs(log_probs).mean(axis=1), mean).sum()


def joint_mutual_information(log_probs: jax.Array) -> jax.Array:
    """I(y_1, ..., y_n; w) [] exactly: the BatchBALD score of the batch `log_probs` [n, K, C]."""
    return joint_entropy(log_probs) - expected_entropy(log_probs).sum()


def sampled_joint_log_probs(
    key: jax.Array, log_probs: jax.Array, joint_samples: int, active: jax.Array | None = None
) -> jax.Array:
    """log p(y^(m) | w_k) [M, K] for M = (joint_samples // K) * K configurations y^(m) ~ p(y).

    Configuration m = (k, s) is the s-th draw of all n labels from p(y | w_k), so the
    rows are a stratified sample of the model's joint predictive.

    Args:
      key: PRNG key of the draws.
      log_probs: [n, K, C] consistent MC log-probabilities.
      joint_samples: M, rounded down to a multiple of K (at least K).
      active: [n] bool; inactive inputs are left out of the joint (fixed-shape buffers).
    """
    check_key(key)
    check_sizes(joint_samples=joint_samples)
    n, k, _ = log_probs.shape
    per_sample = max(1, joint_samples // k)
    active = jnp.ones(n, bool) if active is None else active
    labels = jax.random.categorical(key, log_probs[:, :, None, :], shape=(n, k, per_sample))

    def add(i, total):  # total [K', K, S] += log p(y_i^(k, s) | w_k')
        return total + jnp.where(active[i], log_probs[i][:, labels[i]], 0.0)

    total = jax.lax.fori_loop(0, n, add, jnp.zeros((k, k, per_sample), log_probs.dtype))
    return total.reshape(k, k * per_sample).T


def sampled_joint_entropy(key: jax.Array, log_probs: jax.Array, joint_samples: int) -> jax.Array:
    """H(y_1, ..., y_n) [] estimated as -mean_m log p(y^(m)) over sampled configurations."""
    joint = sampled_joint_log_probs(key, log_probs, joint_samples)
    return -(jax.nn.logsumexp(joint, axis=1) - jnp.log(joint.shape[1])).mean()


def _weighted_rows(joint_log_probs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sampled configurations as (rescaled joint [M, K], row weights [M], entropy offset []).

    With row m rescaled by a_m = max_k p(y^(m) | w_k) and q_m = mean_k of the rescaled row,
    H(y_1..n, y) ~ sum_m w_m sum_c -p~_mc log p~_mc - mean_m log a_m, w_m = 1 / (M q_m),
    where p~_mc = mean_k rescaled_mk p_k(c) (the importance weights of batchbald_redux).
    """
    log_scale = joint_log_probs.max(axis=1)
    joint = jnp.exp(joint_log_probs - log_scale[:, None])
    weights = 1.0 / (joint.shape[0] * joint.mean(axis=1))
    return joint, weights, -log_scale.mean()


def _candidate_joint_entropies(joint, weights, offset, log_probs, chunk_size: int) -> jax.Array:
    """H(batch so far, y_i) [N] for every candidate i of `log_probs` [N, K, C]."""

    def chunk_entropies(chunk):  # [B, K, C]
        probs = jnp.einsum("mk,bkc->bmc", joint, jnp.exp(chunk)) / joint.shape[1]
        return -jnp.einsum("bmc,m->b", xlogy(probs, probs), weights) + offset

    return map_in_chunks(chunk_entropies, log_probs, chunk_size)


def num_exact_steps(num_classes: int, batch_size: int, joint_samples: int) -> int:
    """How many greedy steps enumerate configurations: step n does while C^n <= joint_samples."""
    steps = 0
    while steps < batch_size and num_classes**steps <= joint_samples:
        steps += 1
    return steps


@functools.partial(jax.jit, static_argnames=("batch_size", "joint_samples", "chunk_size"))
def batchbald(
    log_probs: jax.Array,
    batch_size: int,
    *,
    key: jax.Array,
    joint_samples: int = 10_000,
    excluded: jax.Array | None = None,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """Greedy BatchBALD: `batch_size` pool indices and the joint MI of each growing batch.

    Step n adds the candidate maximising I(y_1..n, y; w); scores[n] is that joint MI
    (scores[0] is the chosen sample's BALD score). With batch_size=1 this is top-1 BALD.

    Args:
      log_probs: [N, K, C] consistent MC log-probabilities of the pool.
      batch_size: b (static), at most the number of candidates not excluded.
      key: PRNG key of the sampled configurations (unused while all steps are exact).
      joint_samples: M, the configuration budget: exact while C^n <= M, else M samples.
      excluded: [N] bool, True for samples that may not be chosen (already labeled).
      chunk_size: candidates scored at once (memory: chunk_size * M * C floats).

    Returns:
      indices [b] int32 in the order chosen, scores [b]. Steps left without a candidate
      (b larger than the candidates not excluded) give index -1 and score -inf.
    """
    chex.assert_rank(log_probs, 3)
    # Static settings and the key's type: checked once, while tracing.
    check_sizes(batch_size=batch_size, joint_samples=joint_samples, chunk_size=chunk_size)
    check_key(key)
    n_pool, k, num_classes = log_probs.shape
    if excluded is not None:
        chex.assert_shape(excluded, (n_pool,))
    conditional = expected_entropy(log_probs)  # E_w H(y_i | w) [N]
    excluded = jnp.zeros(n_pool, bool) if excluded is None else excluded
    lowest = jnp.finfo(log_probs.dtype).min

    def choose(joint_entropies, indices, scores, excluded, conditional_sum, n):
        gain = joint_entropies - conditional - conditional_sum
        gain = jnp.where(excluded, -jnp.inf, jnp.where(jnp.isnan(gain), lowest, gain))
        index = jnp.argmax(gain)  # ties go to the lower index
        found = ~excluded.all()  # else every candidate is taken: report -1, change nothing
        return (
            indices.at[n].set(jnp.where(found, index, -1).astype(indices.dtype)),
            scores.at[n].set(jnp.where(found, gain[index], -jnp.inf)),
            excluded.at[index].set(True),
            conditional_sum + jnp.where(found, conditional[index], 0.0),
        )

    zero = jnp.zeros((), log_probs.dtype)
    carry = (jnp.zeros(batch_size, jnp.int32), jnp.zeros(batch_size, log_probs.dtype), excluded, zero)
    exact_steps = num_exact_steps(num_classes, batch_size, joint_samples)
    joint = jnp.ones((1, k), log_probs.dtype)
    for n in range(exact_steps):  # unrolled: the joint grows C-fold per step
        if n > 0:
            joint = (joint[:, None, :] * jnp.exp(log_probs[carry[0][n - 1]]).T[None, :, :]).reshape(-1, k)
        weights = jnp.ones(joint.shape[0], log_probs.dtype)
        entropies = _candidate_joint_entropies(joint, weights, 0.0, log_probs, chunk_size)
        carry = choose(entropies, *carry, n)

    def sampled_step(n, carry):
        chosen = log_probs[carry[0]]  # [b, K, C]; only the first n rows are in the batch
        joint_log = sampled_joint_log_probs(
            jax.random.fold_in(key, n), chosen, joint_samples, active=jnp.arange(batch_size) < n
        )
        entropies = _candidate_joint_entropies(*_weighted_rows(joint_log), log_probs, chunk_size)
        return choose(entropies, *carry, n)

    indices, scores, _, _ = jax.lax.fori_loop(exact_steps, batch_size, sampled_step, carry)
    return indices, scores
