import jax
import jax.numpy as jnp
import numpy as np

from jal.acquisition import random_scores, top_k_unlabeled


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
