import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.acquire.batchbald import (
    batchbald,
    joint_entropy,
    joint_mutual_information,
    num_exact_steps,
    sampled_joint_entropy,
)
from jal.acquire.estimators import bald


def random_log_probs(seed, n, k, c, sharpness=3.0):
    """MC log-probs whose samples disagree: a shared logit per input plus per-sample noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 1, c)) * sharpness + rng.normal(size=(n, k, c)) * 1.5
    return jnp.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))


def brute_force_joint_entropy(log_probs):
    probs = np.exp(np.asarray(log_probs, np.float64))  # [n, K, C]
    n, _, c = probs.shape
    entropy = 0.0
    for labels in itertools.product(range(c), repeat=n):
        p = np.mean(np.prod([probs[i, :, y] for i, y in enumerate(labels)], axis=0))
        entropy -= p * np.log(p) if p > 0 else 0.0
    return entropy


@pytest.mark.slow
def test_exact_joint_entropy_equals_enumeration():
    for seed, (n, k, c) in enumerate([(1, 4, 3), (2, 5, 4), (3, 6, 3), (4, 3, 2)]):
        log_probs = random_log_probs(seed, n, k, c)
        np.testing.assert_allclose(joint_entropy(log_probs), brute_force_joint_entropy(log_probs), rtol=1e-5)


@pytest.mark.slow
def test_sampled_joint_entropy_approaches_the_exact_one():
    log_probs = random_log_probs(7, 4, 20, 10, sharpness=1.0)  # 10^4 configurations
    exact = float(joint_entropy(log_probs))
    errors = []
    for joint_samples in (100, 1_000, 100_000):
        estimate = jax.jit(jax.vmap(lambda key: sampled_joint_entropy(key, log_probs, joint_samples)))  # noqa: B023
        estimates = estimate(jax.random.split(jax.random.key(0), 8))
        errors.append(np.sqrt(np.mean((np.asarray(estimates) - exact) ** 2)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01 * exact, (exact, errors)


def test_batch_of_one_is_top_bald_among_candidates():
    log_probs = random_log_probs(1, 300, 16, 10)
    excluded = jnp.asarray(np.random.default_rng(0).random(300) < 0.3)
    indices, scores = batchbald(log_probs, 1, key=jax.random.key(0), excluded=excluded)
    scores_bald = np.where(np.asarray(excluded), -np.inf, np.asarray(bald(log_probs)))
    assert int(indices[0]) == int(np.argmax(scores_bald))
    np.testing.assert_allclose(scores[0], scores_bald.max(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("joint_samples", [4**4, 20])  # 4 classes: sampled from the 6th or the 4th step on
def test_joint_mi_never_exceeds_the_sum_of_bald_and_never_repeats(joint_samples):
    log_probs = random_log_probs(2, 200, 20, 4)
    indices, scores = batchbald(log_probs, 6, key=jax.random.key(1), joint_samples=joint_samples)
    indices = np.asarray(indices)
    assert len(set(indices.tolist())) == 6
    batch = log_probs[indices]
    for n in range(1, 7):  # every prefix of the greedy batch
        assert float(joint_mutual_information(batch[:n])) <= float(bald(batch[:n]).sum()) + 1e-5
    # Exact steps' scores are the prefixes' joint MI.
    exact = num_exact_steps(4, 6, joint_samples)
    expected = [joint_mutual_information(batch[:n]) for n in range(1, exact + 1)]
    np.testing.assert_allclose(scores[:exact], expected, rtol=1e-4)


@pytest.mark.slow
def test_duplicates_are_never_chosen_twice_and_add_no_information():
    # Four networks. A splits them {0,1} | {2,3}; B splits {0,2} | {1,3}, slightly softer.
    # A copy of A tells nothing once A's label is known; B still does.
    a = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float)
    b = np.array([[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]])
    flat = np.full((4, 2), 0.5)
    pool = np.stack([flat, a, a, b, a, flat])  # A three times at 1, 2, 4
    log_probs = jnp.log(jnp.asarray(pool, jnp.float32))
    top_bald = np.argsort(-np.asarray(bald(log_probs)), kind="stable")[:2]
    assert top_bald.tolist() == [1, 2]  # BALD takes A twice
    indices, scores = batchbald(log_probs, 2, key=jax.random.key(0))
    assert np.asarray(indices).tolist() == [1, 3]
    # With 6 samples wanted from 6, every one is taken exactly once.
    indices, _ = batchbald(log_probs, 6, key=jax.random.key(0), joint_samples=4)
    assert sorted(np.asarray(indices).tolist()) == list(range(6))


def test_exact_step_count():
    assert num_exact_steps(10, 10, 10_000) == 5  # 1, 10, 100, 1000, 10000 configurations
    assert num_exact_steps(10, 3, 10_000) == 3
    assert num_exact_steps(10, 10, 9_999) == 4


@pytest.mark.slow
def test_same_indices_as_batchbald_redux_in_exact_mode():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (JAL_WITH_TORCH=1 bin/test installs it)")
    redux = pytest.importorskip(
        "batchbald_redux.batchbald", reason="batchbald_redux is not installed (JAL_WITH_TORCH=1 bin/test installs it)"
    )
    log_probs = random_log_probs(3, 500, 10, 10)
    theirs = redux.get_batchbald_batch(torch.from_numpy(np.array(log_probs)), 4, 1000, dtype=torch.double)
    ours, scores = batchbald(log_probs, 4, key=jax.random.key(0), joint_samples=1000)
    assert np.asarray(ours).tolist() == theirs.indices
    np.testing.assert_allclose(scores, theirs.scores, rtol=1e-4)


def test_steps_without_a_candidate_say_so():
    log_probs = random_log_probs(4, 5, 6, 3)
    excluded = jnp.array([True, False, True, False, True])
    indices, scores = batchbald(log_probs, 4, key=jax.random.key(0), excluded=excluded, joint_samples=9)
    assert sorted(np.asarray(indices)[:2].tolist()) == [1, 3] and np.asarray(indices)[2:].tolist() == [-1, -1]
    assert np.isfinite(np.asarray(scores)[:2]).all() and np.isneginf(np.asarray(scores)[2:]).all()
