import numpy as np

from jal.diagnostics import (
    ema,
    fall_fractions,
    filter_regret,
    labeled_by_round,
    pooled_noise_sd,
    rank_correlations,
    ranks,
    retrain_rises,
    rise_fractions,
    rises_since_start,
    spearman,
)

P = 200


def shrinking_history(rounds=6, seed=0):
    initial = np.random.default_rng(seed).random(P)
    return np.stack([initial * 0.8**r for r in range(rounds)])


def test_labeled_by_round_follows_the_acquisitions():
    labeled = labeled_by_round(6, [0], [[3], [5, 1], []])
    assert labeled.tolist() == [
        [True, False, False, False, False, False],
        [True, False, False, True, False, False],
        [True, True, False, True, False, True],
    ]


def test_ranks_average_ties_and_spearman_matches_pearson_of_ranks():
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    np.testing.assert_allclose(spearman(a, b), np.corrcoef(ranks(a), ranks(b))[0, 1])
    assert spearman(a, a**3) == 1.0 and spearman(a, -a) == -1.0


def test_uniform_shrinking_gives_no_rises_and_rank_correlation_one():
    history = shrinking_history()
    labeled = labeled_by_round(P, [0, 1], [[2 * r + 2, 2 * r + 3] for r in range(6)])
    np.testing.assert_allclose(rank_correlations(history, labeled), 1.0)
    assert (rise_fractions(history, labeled, noise_sd=0.0) == 0).all()
    assert (fall_fractions(history, labeled, noise_sd=0.0) == 1).all()
    np.testing.assert_allclose(rises_since_start(history, labeled, noise_sd=0.0), 0.0)
    np.testing.assert_allclose(rises_since_start(-history, labeled, noise_sd=0.0), [0, 1, 1, 1, 1, 1])


def test_a_planted_rise_is_found_and_noise_hides_a_small_one():
    history = shrinking_history()
    history[3:, 7] = history[2, 7] + 0.5  # sample 7 becomes more informative at round 3
    labeled = labeled_by_round(P, [0], [[]] * 6)
    fractions = rise_fractions(history, labeled, noise_sd=0.01)
    np.testing.assert_allclose(fractions, [0, 0, 1 / (P - 1), 0, 0])
    # Sample 7 stops falling with the others: one fewer fall from round 2 on.
    falls = fall_fractions(history, labeled, noise_sd=0.0)
    np.testing.assert_allclose(falls, [1, 1, (P - 2) / (P - 1), (P - 2) / (P - 1), (P - 2) / (P - 1)])
    # Against round 0 the planted rise persists: it counts at every round from 3 on.
    np.testing.assert_allclose(rises_since_start(history, labeled, noise_sd=0.01), [0, 0, 0] + [1 / (P - 1)] * 3)
    # A rise within the noise does not count.
    assert (rise_fractions(history, labeled, noise_sd=1.0) == 0).all()
    assert rank_correlations(history, labeled)[3] < 1.0


def test_retrain_rises_count_samples_a_sibling_scores_higher_beyond_noise():
    scores = shrinking_history(rounds=2)
    sibling = scores.copy()
    sibling[:, 3] += 0.5  # a sibling finds samples 3 and 4 more informative
    sibling[:, 4] += 0.5
    sibling[:, 5] -= 0.5  # and 5 less: not a rise
    labeled = labeled_by_round(P, [0], [[4], []])  # sample 4 is labeled by round 1
    np.testing.assert_allclose(retrain_rises(scores, sibling, labeled, 0.01, 0.01), [2 / (P - 1), 1 / (P - 2)])
    assert (retrain_rises(scores, sibling, labeled, 1.0, 1.0) == 0).all()  # within the noise
    assert (retrain_rises(scores, scores, labeled, 0.0, 0.0) == 0).all()
    # The threshold is z * sqrt(sd^2 + sd'^2): 2 * 0.5 = 1.0 for sds 0.3 and 0.4 (their sum
    # would give 1.4, their maximum 0.8).
    one = labeled_by_round(2, [], [[]])
    assert retrain_rises(np.zeros((1, 2)), np.array([[1.1, 0.9]]), one, 0.3, 0.4).tolist() == [0.5]


def test_filter_regret_counts_acquired_samples_the_filter_would_remove():
    scores = np.arange(10, dtype=float)  # sample i scores i
    initially = np.zeros(10, bool)
    initially[9] = True  # the filter ranks the other 9
    # Removing 1/3 of 9 removes samples 0, 1, 2; active learning acquired 2, 5 and 8.
    np.testing.assert_allclose(filter_regret(scores, initially, [2, 5, 8], [0.0, 1 / 3, 1.0]), [0, 1 / 3, 1])


def test_ema_smooths_and_zeroes_labeled_samples():
    history = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    labeled = np.array([[False, False], [False, False], [False, True]])
    np.testing.assert_allclose(ema(history, labeled), [[1.0, 1.0], [0.9, 0.9], [0.81, 0.0]])


def test_pooled_noise_makes_the_rise_test_hold_its_level_on_pure_noise():
    rng = np.random.default_rng(3)
    truth = np.tile(np.linspace(0.1, 1.0, 2000), (2, 1))  # no sample changes between the rounds
    sd = 0.05 * truth  # noise grows with the score
    repeats = rng.normal(truth[:, None, :], sd[:, None, :], size=(2, 2, 2000))  # [R, repeats, S]
    mean, variance = repeats.mean(axis=1), repeats.var(axis=1, ddof=1)
    labeled = np.zeros((2, 2000), bool)
    raw = rise_fractions(mean, labeled, np.sqrt(variance / 2))
    pooled = rise_fractions(mean, labeled, pooled_noise_sd(mean, variance) / np.sqrt(2))
    # One-sided z=2: 2.3% of pure-noise differences; per-sample sds from 2 repeats flag far more.
    assert raw[0] > 0.06 and 0.01 < pooled[0] < 0.04
    np.testing.assert_allclose(np.median(pooled_noise_sd(mean, variance) / sd), 1.0, atol=0.15)
