"""Sampled BatchBALD against exact enumeration, where both are affordable.

Beyond C^n <= M configurations, the joint entropy of n labels is a Monte Carlo mean over
M = S K sampled configurations, S drawn from each p(y | w_k):

* `sampled_joint_entropy`: the mean of t(y) = -log p(y);
* a sampled BatchBALD step scoring candidate c: the mean of t(y) = -sum_c p(c | y) log p(y, c),
  whose expectation is H(y, c) (the importance-weighted form of `batchbald`).

Both are unbiased, with standard error sqrt(sum_k Var_k t / (K^2 S)) for the stratified
draws (`stratified_standard_error`, computed exactly here by enumerating the
configurations), at most sd(t) / sqrt(M), the i.i.d. bound estimated from the draws' own
terms. An estimate is required within Z = 5 standard errors of the exact value: a
two-sided normal tail of 5.7e-7 per comparison, so with the ~1,000 comparisons below a
correct estimator fails with probability below 1e-3 (the keys are fixed, so a pass is
reproducible).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import xlogy

from jal.acquire.batchbald import batchbald, num_exact_steps, sampled_joint_entropy, sampled_joint_log_probs
from jal.acquire.estimators import bald

Z = 5.0


def random_log_probs(seed, n, k, c, sharpness=3.0, noise=1.5):
    """MC log-probs whose samples disagree: a shared logit per input plus per-sample noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 1, c)) * sharpness + rng.normal(size=(n, k, c)) * noise
    return jnp.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))


# Exact values by enumeration, in float64.


def configuration_probs(log_probs) -> np.ndarray:
    """p(y_1..n = y | w_k) [C^n, K] for every configuration y of the n labels of log_probs [n, K, C]."""
    probs = np.exp(np.asarray(log_probs, np.float64))
    joint = np.ones((1, probs.shape[1]))
    for p in probs:
        joint = (joint[:, None, :] * p.T[None]).reshape(-1, probs.shape[1])
    return joint


def conditional_entropies(log_probs) -> np.ndarray:
    """E_w H(y_i | w) [n]."""
    probs = np.exp(np.asarray(log_probs, np.float64))
    return -xlogy(probs, probs).sum(-1).mean(-1)


def exact_mutual_information(log_probs) -> float:
    """I(y_1, ..., y_n; w), enumerated."""
    p = configuration_probs(log_probs).mean(1)
    return float(-xlogy(p, p).sum() - conditional_entropies(log_probs).sum())


def estimator_terms(log_probs, candidate=None) -> tuple[np.ndarray, np.ndarray]:
    """Each configuration's term t(y) [C^n] of a sampled estimator, and p(y | w_k) [C^n, K].

    Without `candidate`: t(y) = -log p(y), the term of `sampled_joint_entropy`. With a
    candidate's log-probs [K, C]: t(y) = -sum_c p(c | y) log p(y, c), the term of a sampled
    BatchBALD step; its mean under p(y) is H(y_1..n, y_c).
    """
    given_w = configuration_probs(log_probs)
    p = given_w.mean(1)
    if candidate is None:
        return -np.log(p), given_w
    with_candidate = given_w @ np.exp(np.asarray(candidate, np.float64)) / given_w.shape[1]  # p(y, c) [C^n, C]
    return -xlogy(with_candidate, with_candidate).sum(1) / p, given_w


def stratified_standard_error(terms, given_w, joint_samples) -> float:
    """The standard deviation of the mean of t over S = M // K draws from each p(y | w_k)."""
    k = given_w.shape[1]
    mean_k = terms @ given_w
    var_k = (terms**2) @ given_w - mean_k**2
    return float(np.sqrt(var_k.sum() / (k**2 * (joint_samples // k))))


# sampled_joint_entropy.

CONFIGS = {  # name: (seed, n, K, C, sharpness): 10^4 and 3^6 = 729 configurations
    "4x10": (7, 4, 20, 10, 1.0),
    "6x3": (8, 6, 8, 3, 2.0),
}


@functools.partial(jax.jit, static_argnames="joint_samples")
def _sampled(keys, log_probs, joint_samples):
    """For every key: sampled_joint_entropy, and the mean and sd of its M per-configuration terms."""

    def one(key):
        joint = sampled_joint_log_probs(key, log_probs, joint_samples)  # [M, K]
        terms = -(jax.nn.logsumexp(joint, axis=1) - jnp.log(joint.shape[1]))
        return sampled_joint_entropy(key, log_probs, joint_samples), terms.mean(), terms.std(ddof=1)

    return jax.lax.map(one, keys, batch_size=16)


@functools.cache
def sampled(config: str, joint_samples: int, num_keys: int):
    """For `config` over `num_keys` keys: the estimates [R], the mean [R] and sd [R] of their terms,
    the exact H, the exact sd of one term under p(y), and the estimates' exact standard error."""
    seed, *shape, sharpness = CONFIGS[config]
    log_probs = random_log_probs(seed, *shape, sharpness=sharpness)
    keys = jax.random.split(jax.random.key(seed), num_keys)
    estimates, means, sds = (np.asarray(a, np.float64) for a in _sampled(keys, log_probs, joint_samples))
    terms, given_w = estimator_terms(log_probs)
    p = given_w.mean(1)
    exact = float(terms @ p)
    term_sd = float(np.sqrt(terms**2 @ p - exact**2))
    return estimates, means, sds, exact, term_sd, stratified_standard_error(terms, given_w, joint_samples)


@pytest.mark.slow
@pytest.mark.parametrize("config, joint_samples", [("4x10", 100), ("4x10", 10_000), ("6x3", 64)])
def test_sampled_joint_entropy_is_within_z_standard_errors(config, joint_samples):
    estimates, means, sds, exact, term_sd, se = sampled(config, joint_samples, 64)
    np.testing.assert_allclose(estimates, means, rtol=1e-5)  # the estimate is the mean of these terms
    # Each estimate within Z of its own standard error, sd(terms) / sqrt(M), from its draws.
    errors = np.abs(estimates - exact)
    worst = np.argmax(errors / sds)
    assert (errors <= Z * sds / np.sqrt(joint_samples)).all(), (
        f"H = {exact:.4f}, estimate {estimates[worst]:.4f}: {errors[worst] / sds[worst] * np.sqrt(joint_samples):.1f} "
        f"standard errors off"
    )
    # The draws' terms spread as t(y) does under p(y) (the mean of 64 sample sds: within a
    # few percent), which bounds the stratified draws' exact error.
    np.testing.assert_allclose(sds.mean(), term_sd, rtol=0.1)
    assert se <= term_sd / np.sqrt(joint_samples) * (1 + 1e-9)
    # The spread over keys is the exact error: the M draws are spent, and independent. (The
    # sample sd of 64 estimates is within 5 x 9% of the truth.)
    spread = estimates.std(ddof=1)
    assert 0.55 * se <= spread <= 1.45 * se, f"estimates spread {spread:.4f} over keys, standard error {se:.4f}"


@pytest.mark.slow
def test_sampled_error_shrinks_like_one_over_sqrt_m():
    errors = {}
    for joint_samples in (100, 10_000):
        estimates, *_, exact, _, se = sampled("4x10", joint_samples, 64)
        errors[joint_samples] = np.abs(estimates - exact).mean()
        # For normal errors of sd se, E|error| = se sqrt(2 / pi); the mean of 64 has a
        # relative sd of sqrt(pi / 2 - 1) / 8 = 9.4%.
        expected = se * np.sqrt(2 / np.pi)
        ratio = errors[joint_samples] / expected
        assert abs(ratio - 1) <= Z * np.sqrt(np.pi / 2 - 1) / 8, (
            f"M = {joint_samples}: mean |error| {ratio:.2f}x expected"
        )
    # 100x the samples: a tenth of the error (the ratio of two such means: within about 5 x 13%).
    assert 5 <= errors[100] / errors[10_000] <= 20, f"mean |error| by M: {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("config, joint_samples", [("4x10", 100), ("6x3", 64)])
def test_sampled_joint_entropy_is_unbiased(config, joint_samples):
    estimates, *_, exact, _, se = sampled(config, joint_samples, 1024)
    # The mean of 1,024 independent estimates: within Z standard errors of the mean, se / 32.
    bias, mean_se = estimates.mean() - exact, se / np.sqrt(len(estimates))
    assert abs(bias) <= Z * mean_se, f"H = {exact:.4f}, mean estimate {exact + bias:.4f}: {bias / mean_se:.1f} se"


# batchbald's sampled steps.


def _pool_with_a_constant_input():
    """Five inputs the K samples disagree on, and one they all predict alike (it adds no information).

    With batch = pool, the greedy order is fixed: the five, then the constant one last.
    Steps 4 and 5 are sampled (4^4 > 64 configurations), and both estimate the same
    I(all six) = I(the five): step 4 with the fifth input's label summed exactly, step 5 with
    it sampled and the constant input summed.
    """
    rng = np.random.default_rng(5)
    k, c = 8, 4
    informative = rng.normal(size=(5, 1, c)) + rng.normal(size=(5, k, c)) * 1.5
    constant = np.broadcast_to(rng.normal(size=(1, 1, c)), (1, k, c))
    return jnp.asarray(jax.nn.log_softmax(jnp.asarray(np.concatenate([informative, constant]), jnp.float32)))


@functools.partial(jax.jit, static_argnames=("batch_size", "joint_samples"))
def _batchbald_over_keys(log_probs, keys, batch_size, joint_samples):
    return jax.vmap(lambda key: batchbald(log_probs, batch_size, key=key, joint_samples=joint_samples))(keys)


@pytest.mark.slow
def test_sampled_steps_estimate_the_joint_mi_without_bias():
    log_probs, joint_samples, num_keys = _pool_with_a_constant_input(), 64, 512
    assert num_exact_steps(4, 6, joint_samples) == 4
    indices, scores = _batchbald_over_keys(log_probs, jax.random.split(jax.random.key(3), num_keys), 6, joint_samples)
    indices, scores = np.asarray(indices), np.asarray(scores, np.float64)
    assert (indices == indices[0]).all() and indices[0, 5] == 5, np.unique(indices, axis=0)
    order = indices[0]
    exact = exact_mutual_information(log_probs)
    np.testing.assert_allclose(exact, exact_mutual_information(log_probs[:5]), rtol=1e-6)
    errors = {}
    for step in (4, 5):
        terms, given_w = estimator_terms(log_probs[order[:step]], log_probs[order[step]])
        se = stratified_standard_error(terms, given_w, joint_samples)
        errors[step] = scores[:, step] - exact
        worst = np.abs(errors[step]).max()
        assert worst <= Z * se, f"step {step}: I = {exact:.4f}, an estimate {worst / se:.1f} standard errors off"
        bias = errors[step].mean()
        assert abs(bias) <= Z * se / np.sqrt(num_keys), (
            f"step {step}: I = {exact:.4f}, mean estimate {exact + bias:.4f}: {bias / se * np.sqrt(num_keys):.1f} "
            f"standard errors"
        )
        # The spread over keys is the stratified error (the sd of 512 estimates: within 5 x 3.1%).
        spread = errors[step].std(ddof=1)
        assert 0.8 * se <= spread <= 1.2 * se, f"step {step}: estimates spread {spread:.4f}, standard error {se:.4f}"
    # Each sampled step draws its own configurations: the two errors are uncorrelated.
    correlation = np.corrcoef(errors[4], errors[5])[0, 1]
    assert abs(correlation) <= Z / np.sqrt(num_keys), f"errors of steps 4 and 5 correlated: {correlation:.3f}"


@pytest.mark.slow
def test_greedy_scores_do_not_decrease():
    """Joint MI of a growing set never decreases: exactly in the exact steps, within noise in the sampled ones.

    Sampled scores are estimates (and maxima of estimates over the candidates), so two
    successive ones can decrease by noise: step n's score is required to be at least step
    n-1's minus Z times the sd of their difference, estimated over 16 keys.
    """
    pools = jnp.stack([random_log_probs(seed, 40, 16, 4, sharpness=1.0) for seed in range(5)])
    batch_size, joint_samples = 8, 256
    exact_steps = num_exact_steps(4, batch_size, joint_samples)
    assert exact_steps == 5
    keys = jax.random.split(jax.random.key(4), 16)
    over_pools = jax.jit(jax.vmap(lambda pool: _batchbald_over_keys(pool, keys, batch_size, joint_samples)))
    indices, scores = over_pools(pools)
    indices, scores = np.asarray(indices), np.asarray(scores, np.float64)
    for pool, pool_indices, pool_scores in zip(pools, indices, scores, strict=True):
        # The first pick is top-1 BALD.
        bald_scores = np.asarray(bald(pool))
        assert (pool_indices[:, 0] == np.argmax(bald_scores)).all()
        np.testing.assert_allclose(pool_scores[:, 0], bald_scores.max(), rtol=1e-5)
        # Exact steps: the same for every key, the prefixes' joint MI, non-decreasing.
        assert (pool_indices[:, :exact_steps] == pool_indices[0, :exact_steps]).all()
        assert (pool_scores[:, :exact_steps] == pool_scores[0, :exact_steps]).all()
        expected = [exact_mutual_information(pool[pool_indices[0, :n]]) for n in range(1, exact_steps + 1)]
        np.testing.assert_allclose(pool_scores[0, :exact_steps], expected, rtol=1e-4)
        assert (np.diff(pool_scores[0, :exact_steps]) >= -1e-5).all(), f"exact steps' scores {pool_scores[0]}"
        # Sampled steps (and the step from the last exact one to the first sampled one).
        sd = pool_scores.std(axis=0, ddof=1)
        for n in range(exact_steps, batch_size):
            tolerance = Z * np.hypot(sd[n], sd[n - 1])
            drop = (pool_scores[:, n - 1] - pool_scores[:, n]).max()
            assert drop <= tolerance, f"step {n}: a score {drop:.4f} below the last one, tolerance {tolerance:.4f}"
