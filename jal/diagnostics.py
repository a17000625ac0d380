"""Does what looks uninformative early stay so? Diagnostics of a run's score history.

Information gain is (approximately) submodular: as labels accumulate, a sample's score
should only fall, up to the noise of its MC estimate. Then early filtering is safe (what
it removes would not have been chosen later) and the ranking of iteration 0 persists.
These functions measure how far a run departs from that, from its [R, P] pool-score
history (round r = the model trained before the r-th acquisition).
"""

from __future__ import annotations

import numpy as np


def labeled_by_round(pool_size: int, initial, acquired_per_round) -> np.ndarray:
    """[R, P] bool: the samples labeled when round r's model was trained.

    Args:
      pool_size: P.
      initial: the initial labeled pool indices.
      acquired_per_round: R lists of pool indices, those acquired after round r's scoring.
    """
    labeled = np.zeros((len(acquired_per_round), pool_size), bool)
    current = np.zeros(pool_size, bool)
    current[np.asarray(initial, int)] = True
    for r, acquired in enumerate(acquired_per_round):
        labeled[r] = current
        current = current.copy()
        current[np.asarray(acquired, int)] = True
    return labeled


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's correlation needs)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Runs of equal values share the mean of their positions.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    result = np.empty(len(values))
    result[order] = np.repeat(average, ends - starts)
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (NaN if either is constant)."""
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def rank_correlations(history: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """[R] Spearman correlation of round 0's scores with round r's, over samples unlabeled at r."""
    return np.array([spearman(history[0, ~labeled[r]], history[r, ~labeled[r]]) for r in range(len(history))])


def _share_rose(before, after, sd_before, sd_after, labeled, z: float) -> np.ndarray:
    """[R] the share of samples unlabeled in each row with after - before > z * sqrt(sd_b^2 + sd_a^2)."""
    threshold = z * np.sqrt(np.asarray(sd_before, float) ** 2 + np.asarray(sd_after, float) ** 2)
    rose = (np.asarray(after) - np.asarray(before)) > threshold
    unlabeled = ~labeled
    return (rose & unlabeled).sum(axis=1) / np.maximum(unlabeled.sum(axis=1), 1)


def rise_fractions(history: np.ndarray, labeled: np.ndarray, noise_sd, z: float = 2.0) -> np.ndarray:
    """[R-1] the fraction of samples whose score rose from round r to r+1 beyond the noise.

    A rise counts when s[r+1] - s[r] > z * sqrt(sd[r]^2 + sd[r+1]^2), sd being the standard
    deviation of a score's MC estimate (re-score with fresh dropout keys to measure it).
    Only samples still unlabeled at round r+1 count.

    Args:
      history: [R, P] scores.
      labeled: [R, P] bool, from `labeled_by_round`.
      noise_sd: the MC standard deviation, broadcastable to [R, P].
      z: how many standard deviations a rise must exceed.
    """
    sd = np.broadcast_to(np.asarray(noise_sd, float), history.shape)
    return _share_rose(history[:-1], history[1:], sd[:-1], sd[1:], labeled[1:], z)


def fall_fractions(history: np.ndarray, labeled: np.ndarray, noise_sd, z: float = 2.0) -> np.ndarray:
    """[R-1] the fraction of samples whose score fell from round r to r+1 beyond the noise.

    The mirror of `rise_fractions`: under submodularity falls outnumber rises; when the two
    are alike, scores fluctuate from model to model rather than diminish.
    """
    return rise_fractions(-np.asarray(history), labeled, noise_sd, z)


def rises_since_start(history: np.ndarray, labeled: np.ndarray, noise_sd, z: float = 2.0) -> np.ndarray:
    """[R] the fraction of samples whose score at round r exceeds their round-0 score beyond the noise.

    Between neighbouring rounds a few labels change little, so diminishing scores are hard
    to see there; against round 0 the change accumulates. Under submodularity this stays at
    the rate retraining alone produces (`retrain_rises`) while the falls since round 0
    (`rises_since_start(-history, ...)`) grow. Only samples unlabeled at round r count.
    """
    sd = np.broadcast_to(np.asarray(noise_sd, float), history.shape)
    return _share_rose(history[0], history, sd[0], sd, labeled, z)


def retrain_rises(scores, sibling_scores, labeled, noise_sd, sibling_noise_sd, z: float = 2.0) -> np.ndarray:
    """[R] the fraction of samples that score higher under a sibling model beyond the noise.

    A sibling is trained again on round r's labels with other random numbers, so what it
    changes is the training noise alone: the rate of rises that retraining produces with
    no new label. Rises between rounds at about this rate are not evidence against
    submodularity; rises well above it are. Only samples unlabeled at round r count.

    Args:
      scores, sibling_scores: [R, P] scores under round r's model and under its sibling.
      labeled: [R, P] bool.
      noise_sd, sibling_noise_sd: their MC standard deviations, broadcastable to [R, P].
      z: how many standard deviations a rise must exceed.
    """
    return _share_rose(scores, sibling_scores, noise_sd, sibling_noise_sd, labeled, z)


def pooled_noise_sd(scores: np.ndarray, variances: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each sample's MC noise sd, pooled over the samples of similar score in its round.

    A variance from a few repeats is itself very noisy (from 2 repeats, 1 degree of
    freedom: a z=2 test would then flag about 9% of pure-noise differences, not 2.3%). The
    noise depends smoothly on the score level, so within each round the variances of the
    samples in one score quantile bin are averaged: about (S / bins) * (repeats - 1)
    degrees of freedom per estimate.

    Args:
      scores: [R, S] mean scores.
      variances: [R, S] per-sample variances of one score estimate.
      bins: quantile bins per round.
    """
    pooled = np.empty_like(variances, dtype=float)
    for r in range(len(scores)):
        order = np.argsort(scores[r], kind="stable")
        for members in np.array_split(order, min(bins, len(order))):
            pooled[r, members] = variances[r, members].mean()
    return np.sqrt(pooled)


def filter_regret(initial_scores: np.ndarray, initially_labeled: np.ndarray, acquired, fractions) -> np.ndarray:
    """Of the samples active learning acquired, the share an early filter would have removed.

    The filter removes the fraction x of the initially unlabeled pool with the lowest
    round-0 scores (ties broken by index). Submodularity predicts a share near 0.

    Args:
      initial_scores: [P] round-0 scores.
      initially_labeled: [P] bool.
      acquired: pool indices acquired over the run.
      fractions: the fractions x in [0, 1] to evaluate.

    Returns:
      [len(fractions)] shares in [0, 1].
    """
    candidates = np.flatnonzero(~initially_labeled)
    ascending = candidates[np.argsort(initial_scores[candidates], kind="stable")]
    acquired = np.asarray(acquired, int)
    shares = []
    for fraction in fractions:
        removed = np.zeros(len(initial_scores), bool)
        removed[ascending[: int(round(fraction * len(candidates)))]] = True
        shares.append(removed[acquired].mean() if len(acquired) else 0.0)
    return np.array(shares)


def ema(history: np.ndarray, labeled: np.ndarray, decay: float = 0.9) -> np.ndarray:
    """[R, P] exponential moving average of each sample's score; labeled samples read 0.

    The smoothing of the seed's score-evolution animation: e[r] = decay e[r-1] + (1 - decay) s[r],
    starting from e[0] = s[0].
    """
    smoothed = np.empty_like(history, dtype=float)
    smoothed[0] = history[0]
    for r in range(1, len(history)):
        smoothed[r] = decay * smoothed[r - 1] + (1 - decay) * history[r]
    return np.where(labeled, 0.0, smoothed)
