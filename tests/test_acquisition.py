import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.acquire.sampling import SAMPLINGS, choose, random_scores, sampling_log_weights, top_k_unlabeled
from jal.errors import JalError


def test_top_k_takes_best_unlabeled_with_stable_ties():
    scores = jnp.array([0.9, 0.5, 0.7, 0.7, 0.1, 0.7, jnp.nan])
    labeled = jnp.array([True, False, False, False, False, False, False])
    indices, chosen = top_k_unlabeled(scores, labeled, 4)
    np.testing.assert_array_equal(indices, [2, 3, 5, 1])  # 0 is labeled; the three 0.7 ties by index
    np.testing.assert_allclose(chosen, [0.7, 0.7, 0.7, 0.5])


def test_nan_scores_rank_last_but_above_labeled_samples():
    scores = jnp.array([1.0, jnp.nan, jnp.nan, 0.5])
    labeled = jnp.array([True, False, False, True])
    indices, _ = top_k_unlabeled(scores, labeled, 2)
    np.testing.assert_array_equal(indices, [1, 2])


def test_top_k_never_picks_labeled_even_if_they_score_highest():
    key = jax.random.key(0)
    scores = jax.random.uniform(key, (1000,))
    labeled = scores > 0.5
    indices, _ = top_k_unlabeled(scores, labeled, 100)
    assert not np.asarray(labeled)[np.asarray(indices)].any()
    assert len(set(np.asarray(indices).tolist())) == 100
    unlabeled_scores = np.sort(np.asarray(scores)[~np.asarray(labeled)])[::-1]
    np.testing.assert_allclose(np.sort(np.asarray(scores)[np.asarray(indices)])[::-1], unlabeled_scores[:100])


def test_random_scores_pick_uniformly():
    counts = np.zeros(10)
    for seed in range(2000):
        indices, _ = top_k_unlabeled(random_scores(jax.random.key(seed), 10), jnp.zeros(10, bool), 2)
        counts[np.asarray(indices)] += 1
    # 4000 picks over 10 samples: 400 each, binomial sd about 19.
    assert np.abs(counts - 400).max() < 80


SCORES = jnp.array([0.05, 0.9, 0.3, 0.6, 0.0, 0.45, 0.8, 0.15, 0.7, 0.2, 0.35, 0.5])
LABELED = jnp.zeros(12, bool).at[jnp.array([1, 4])].set(True)
UNLABELED = np.flatnonzero(~np.asarray(LABELED))
# 99.9% quantile of chi-square with 9 degrees of freedom (10 unlabeled samples, k=1).
CHI2_9_999 = 27.88


def draw_counts(sampling, temperature, k=1, draws=20_000):
    keys = jax.random.split(jax.random.key(0), draws)
    pick = jax.jit(jax.vmap(lambda key: choose(key, SCORES, LABELED, k, sampling=sampling, temperature=temperature)[0]))
    indices = np.asarray(pick(keys))
    return np.bincount(indices.ravel(), minlength=12), indices


def chi_square(counts, probabilities):
    expected = probabilities * counts.sum()
    return np.sum((counts - expected) ** 2 / expected)


@pytest.mark.parametrize("sampling", SAMPLINGS[1:])
def test_low_temperature_is_top_k(sampling):
    _, indices = draw_counts(sampling, 1e-3, k=3, draws=200)
    top3, _ = top_k_unlabeled(SCORES, LABELED, 3)
    assert (indices == np.asarray(top3)).all()
    assert (choose(jax.random.key(0), SCORES, LABELED, 3, sampling=sampling, temperature=0.0)[0] == top3).all()


@pytest.mark.parametrize("sampling", SAMPLINGS[1:])
def test_high_temperature_is_uniform_over_unlabeled(sampling):
    counts, _ = draw_counts(sampling, 1e6)
    assert counts[~np.asarray(LABELED)].sum() == counts.sum()
    assert chi_square(counts[UNLABELED], np.full(10, 0.1)) < CHI2_9_999


@pytest.mark.parametrize(
    "sampling, weights",
    [
        ("power", np.asarray(SCORES)),  # p ~ s (the zero score is labeled here)
        ("softmax", np.exp(np.asarray(SCORES))),
        ("softrank", None),  # p ~ 1 / rank among unlabeled
    ],
)
def test_unit_temperature_draws_with_the_stated_probabilities(sampling, weights):
    counts, _ = draw_counts(sampling, 1.0)
    if weights is None:
        ranks = np.empty(10)
        ranks[np.argsort(-np.asarray(SCORES)[UNLABELED], kind="stable")] = np.arange(1, 11)
        weights_unlabeled = 1.0 / ranks
    else:
        weights_unlabeled = weights[UNLABELED]
    probabilities = weights_unlabeled / weights_unlabeled.sum()
    assert chi_square(counts[UNLABELED], probabilities) < CHI2_9_999
    # ... and not uniform: the test has the power to tell them apart.
    assert chi_square(counts[UNLABELED], np.full(10, 0.1)) > 10 * CHI2_9_999


def test_stochastic_batches_are_distinct_unlabeled_samples_even_for_zero_and_nan_scores():
    scores = jnp.array([0.0, jnp.nan, 0.0, 1.0, 0.0, 0.5])
    labeled = jnp.array([False, False, False, True, False, True])
    for sampling in SAMPLINGS[1:]:
        for seed in range(20):
            indices, _ = choose(jax.random.key(seed), scores, labeled, 4, sampling=sampling, temperature=1e-3)
            assert sorted(np.asarray(indices).tolist()) == [0, 1, 2, 4]
        assert np.isfinite(np.asarray(sampling_log_weights(scores, labeled, sampling, 1e-3))).all()


@pytest.mark.slow
class ChooseUnderJitAndWithout(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_choose_is_the_same_function_traced_or_not(self):
        scores = jax.random.uniform(jax.random.key(0), (50,))
        labeled = jnp.arange(50) % 7 == 0
        for sampling in SAMPLINGS:
            choose_k = functools.partial(choose, k=5, sampling=sampling, temperature=0.5)
            indices, chosen = self.variant(choose_k)(jax.random.key(1), scores, labeled)
            want, _ = choose(jax.random.key(1), scores, labeled, 5, sampling=sampling, temperature=0.5)
            np.testing.assert_array_equal(indices, want, err_msg=sampling)
            np.testing.assert_allclose(chosen, scores[indices])
            assert not np.asarray(labeled)[np.asarray(indices)].any()


def test_top_k_checks_its_arguments_and_may_take_the_whole_pool():
    scores, labeled = jnp.array([0.3, 0.1, 0.2]), jnp.zeros(3, bool)
    np.testing.assert_array_equal(top_k_unlabeled(scores, labeled, 3)[0], [0, 2, 1])  # k = P is allowed
    with pytest.raises(JalError, match="exceeds the pool of 3"):
        top_k_unlabeled(scores, labeled, 4)
    with pytest.raises(JalError, match="`k`"):
        top_k_unlabeled(scores, labeled, 0)
    with pytest.raises(AssertionError, match="rank"):
        top_k_unlabeled(scores[None], labeled[None], 1)
    with pytest.raises(AssertionError, match="shape"):
        top_k_unlabeled(scores, jnp.zeros(4, bool), 1)


def test_the_default_temperature_is_one():
    for sampling in SAMPLINGS[1:]:
        key = jax.random.key(3)
        np.testing.assert_array_equal(
            choose(key, SCORES, LABELED, 4, sampling=sampling)[0],
            choose(key, SCORES, LABELED, 4, sampling=sampling, temperature=1.0)[0],
        )


def test_softmax_keeps_the_order_of_scores_near_the_float_range():
    """The weights are taken relative to the highest score, so no weight overflows to a tie."""
    scores, labeled = jnp.array([1e38, 3e38, 2e38], jnp.float32), jnp.zeros(3, bool)
    for seed in range(50):
        assert int(choose(jax.random.key(seed), scores, labeled, 1, sampling="softmax")[0][0]) == 1


@pytest.mark.parametrize("sampling", SAMPLINGS[1:])
def test_the_coldest_temperature_a_float_holds_still_draws_the_ranking(sampling):
    """Log-weights clip at a quarter of the float range: room for the Gumbel noise, and the order kept."""
    scores, labeled = jnp.array([0.2, 0.5, 1.0, 0.1]), jnp.zeros(4, bool)
    for seed in range(20):
        indices, _ = choose(jax.random.key(seed), scores, labeled, 2, sampling=sampling, temperature=1e-38)
        np.testing.assert_array_equal(indices, [2, 1])


def test_softrank_breaks_ties_by_pool_position_on_every_backend():
    """Ranks come from a sort asked to be stable: XLA may reorder equal keys of an unstable sort."""
    jaxpr = str(jax.make_jaxpr(lambda s, m: sampling_log_weights(s, m, "softrank", 1.0))(SCORES, LABELED))
    assert "is_stable=True" in jaxpr and "is_stable=False" not in jaxpr
    tied = sampling_log_weights(jnp.array([0.5, 0.5, 0.5]), jnp.zeros(3, bool), "softrank", 1.0)
    assert np.all(np.diff(np.asarray(tied)) < 0)  # first of equals ranks first
