import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.acquire.epig import epig, sample_targets
from jal.errors import JalError


def random_log_probs(seed, n, k, c):
    rng = np.random.default_rng(seed)
    return jax.nn.log_softmax(jnp.asarray(rng.normal(size=(n, 1, c)) * 2 + rng.normal(size=(n, k, c)), jnp.float32))


def reference_epig(log_probs, target_log_probs):
    """The definition, term by term in float64."""
    p, q = np.exp(np.asarray(log_probs, np.float64)), np.exp(np.asarray(target_log_probs, np.float64))
    scores = np.zeros(len(p))
    for i in range(len(p)):
        for t in range(len(q)):
            joint = (p[i][:, :, None] * q[t][:, None, :]).mean(axis=0)
            independent = p[i].mean(axis=0)[:, None] * q[t].mean(axis=0)[None, :]
            scores[i] += np.sum(joint * np.log(joint / independent)) / len(q)
    return scores


def test_epig_matches_its_definition_and_is_non_negative():
    log_probs, targets = random_log_probs(0, 37, 8, 5), random_log_probs(1, 6, 8, 5)
    scores = epig(log_probs, targets, chunk_size=16)  # 37 is not a multiple of the chunk
    np.testing.assert_allclose(scores, reference_epig(log_probs, targets), rtol=1e-4, atol=1e-6)
    assert (np.asarray(scores) >= 0).all() and np.asarray(scores).max() > 0.01


def test_epig_is_zero_when_all_samples_agree():
    one_sample = random_log_probs(2, 20, 1, 10)
    agreeing = jnp.repeat(one_sample, 16, axis=1)  # K identical networks
    targets = jnp.repeat(random_log_probs(3, 8, 1, 10), 16, axis=1)
    np.testing.assert_allclose(epig(agreeing, targets), 0.0, atol=1e-6)
    # Disagreement about the pool alone is not enough either: the targets must share it.
    np.testing.assert_allclose(epig(random_log_probs(4, 20, 16, 10), targets), 0.0, atol=1e-6)


def test_targets_are_pool_indices():
    targets = np.asarray(sample_targets(jax.random.key(0), 50, 1000))
    assert targets.min() >= 0 and targets.max() < 50 and len(np.unique(targets)) == 50


def test_a_class_no_network_predicts_adds_nothing():
    """0 log 0 = 0: a class of probability exactly 0 leaves EPIG as if the class were not there."""
    log_probs, targets = random_log_probs(2, 9, 6, 4), random_log_probs(3, 5, 6, 4)
    impossible = jnp.concatenate([jnp.full((9, 6, 1), -jnp.inf), log_probs[..., 1:]], axis=-1)
    impossible = jax.nn.log_softmax(impossible)  # class 0 impossible, the others renormalised
    scores = np.asarray(epig(impossible, targets, chunk_size=4))
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, reference_epig(impossible[..., 1:], targets), rtol=1e-4, atol=1e-6)


def test_pool_and_targets_must_come_from_the_same_networks_and_classes():
    log_probs = random_log_probs(0, 5, 4, 3)
    with pytest.raises(AssertionError, match="rank"):
        epig(log_probs[:, 0], random_log_probs(1, 2, 4, 3)[:, 0])
    with pytest.raises(AssertionError):  # 4 classes against 3: no joint distribution to take
        epig(log_probs, random_log_probs(1, 2, 4, 4))
    with pytest.raises(AssertionError):  # other networks
        epig(log_probs, random_log_probs(1, 2, 6, 3))


def test_targets_need_a_key():
    with pytest.raises(JalError, match="`key`"):
        sample_targets(7, 10, 3)
