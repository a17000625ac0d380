"""Property tests of every per-input score on random MC log-probabilities [N, K, C].

Inputs mix, row by row, uniform distributions, softmaxes of logits at scales up to 1e38
(log-probabilities of -1e4, -1e30 and, past float32's range, -inf) and rows with exact
-inf entries down to one-hots. `JAL_PROPERTY_EXAMPLES` sets the examples per property
(e.g. 10000 for a thorough run); the default keeps the file to seconds.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jal.acquire import ACQUISITIONS
from jal.acquire import estimators as est

PROPERTY = settings(max_examples=int(os.environ.get("JAL_PROPERTY_EXAMPLES", "300")), deadline=None)

# A few fixed shapes [N, K, C], as each new one compiles every score again: K from 1 to 16, C from 2 to 20.
SHAPES = [(1, 1, 3), (1, 2, 2), (3, 2, 7), (2, 5, 3), (4, 8, 10), (2, 16, 20), (1, 3, 20)]
# Logit scales: 0 gives the uniform; 1e4 and 1e30 give log-probs of that size; 1e38 overflows to -inf.
SCALES = [0.0, 1.0, 10.0, 1e4, 1e30, 1e38]
# Which classes get exact -inf logits: none, a random subset, all but one (a one-hot).
MASKS = ["none", "subset", "one_hot"]
# Float32 rounding over at most 20 classes and 16 samples stays well within this.
TOL = 2e-5

# Every acquisition's score of each input alone, under the name of what it records.
PER_INPUT = {acq.name: acq for acq in ACQUISITIONS.values() if not acq.uses_targets}
RECORDED = {name: acq.recorded_score for name, acq in PER_INPUT.items()}


@jax.jit
def scores(log_probs):
    out = {name: acq.score(log_probs, None) for name, acq in PER_INPUT.items()}
    return out | {"expected_entropy": est.expected_entropy(log_probs)}


def bounds(name: str, n: int, k: int, c: int) -> tuple[float, float]:
    """Each score's range for K samples over C classes."""
    log_c = np.log(c)
    return {
        # Entropy of a distribution over C classes: 0 for a one-hot, log C for the uniform.
        "entropy": (0.0, log_c),
        "expected_entropy": (0.0, log_c),
        # I(y; theta) <= H(y) <= log C, and <= H(theta) = log K with theta uniform over the K samples.
        "bald": (0.0, min(log_c, np.log(k))),
        # The largest of C probabilities summing to 1 is at least 1/C.
        "least_confidence": (0.0, 1 - 1 / c),
        # p_top1 - p_top2 lies in [0, 1].
        "margin": (0.0, 1.0),
        # The modal class takes at least ceil(K / C) of the K votes (so at most 1 - 1/C).
        "variation_ratio": (0.0, 1 - np.ceil(k / c) / k),
        # Per class var <= q (1 - q) for samples in [0, 1] of mean q; sum_c sqrt(q_c (1 - q_c))
        # is concave on the simplex, so largest at the uniform: sqrt(C - 1).
        "mean_std": (0.0, np.sqrt(c - 1) / c),
    }[name]


@st.composite
def log_probs(draw, repeat_samples: bool = False):
    """Normalised float32 log-probabilities [N, K, C]; with `repeat_samples`, all K samples equal."""
    n, k, c = draw(st.sampled_from(SHAPES))
    scales = draw(st.lists(st.sampled_from(SCALES), min_size=1, max_size=3))
    masks = draw(st.lists(st.sampled_from(MASKS), min_size=1, max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = (n, 1 if repeat_samples else k)
    logits = rng.standard_normal((*rows, c)) * rng.choice(scales, rows)[..., None]
    mask = rng.choice(masks, rows)[..., None]
    u = rng.random((*rows, c))
    top = u == u.max(-1, keepdims=True)  # stays finite, so every row keeps a class
    finite = np.select([mask == "subset", mask == "one_hot"], [(u < 0.5) | top, top], True)
    logits = np.where(finite, logits, -np.inf)
    # log_softmax in float64, then float32: below float32's range becomes -inf.
    shifted = logits - logits.max(-1, keepdims=True)
    with np.errstate(over="ignore"):
        out = (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).astype(np.float32)
    return np.repeat(out, k, axis=1)


def check_bounds(name, values, shape):
    low, high = bounds(RECORDED.get(name, name), *shape)
    assert (values >= low - TOL).all() and (values <= high + TOL).all(), (name, values, (low, high))


@pytest.mark.slow
@PROPERTY
@given(log_probs())
def test_scores_are_finite_and_within_bounds(lp):
    out = {name: np.asarray(v, np.float64) for name, v in scores(lp).items()}
    for name, values in out.items():
        assert values.shape == (lp.shape[0],) and np.isfinite(values).all(), (name, values)
        check_bounds(name, values, lp.shape)
    # Mean entropy <= entropy of the mean (concavity), so BALD <= predictive entropy.
    assert (out["expected_entropy"] <= out["entropy"] + TOL).all()
    assert (out["bald"] <= out["entropy"] + TOL).all()
    # margin = (1 - p_top1) + p_top2, and p_top2 <= 1 - p_top1.
    lc = out["least_confidence"]
    assert (lc - TOL <= out["margin"]).all() and (out["margin"] <= 2 * lc + TOL).all()
    # Each vote is 1/K of the samples.
    k = lp.shape[1]
    np.testing.assert_allclose(out["variation_ratio"] * k, np.round(out["variation_ratio"] * k), atol=1e-4)


@PROPERTY
@given(log_probs(), st.randoms(use_true_random=False))
def test_scores_ignore_the_order_of_samples(lp, random):
    order = list(range(lp.shape[1]))
    random.shuffle(order)
    before, after = scores(lp), scores(lp[:, order])
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=TOL, err_msg=name)


@pytest.mark.slow
@PROPERTY
@given(log_probs(repeat_samples=True))
def test_identical_samples_carry_no_information(lp):
    out = scores(lp)
    # Samples that agree: the mean is each of them, so nothing is learnt about the parameters.
    for name in (name for name in out if RECORDED.get(name, name) in ("bald", "mean_std")):
        np.testing.assert_allclose(out[name], 0.0, atol=TOL, err_msg=name)
    np.testing.assert_array_equal(out["variation_ratio"], 0.0)
    np.testing.assert_allclose(out["entropy"], out["expected_entropy"], rtol=1e-5, atol=TOL)


def reference(lp):
    """The scores in float64 numpy from probabilities, 0 log 0 = 0."""
    p = np.exp(lp.astype(np.float64))
    mean = p.mean(1)

    def h(q):
        return -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), -1)

    top2 = -np.sort(-mean, -1)[..., :2]
    votes = np.stack([np.bincount(row, minlength=lp.shape[-1]) for row in lp.argmax(-1)])
    return {
        "entropy": h(mean),
        "expected_entropy": h(p).mean(1),
        "bald": h(mean) - h(p).mean(1),
        "least_confidence": 1 - top2[:, 0],
        "margin": 1 - (top2[:, 0] - top2[:, 1]),
        "variation_ratio": 1 - votes.max(-1) / lp.shape[1],
        "mean_std": p.std(1).mean(-1),
    }


@PROPERTY
@given(log_probs())
def test_scores_match_a_float64_reference(lp):
    expected = reference(lp)
    for name, values in scores(lp).items():
        np.testing.assert_allclose(values, expected[RECORDED.get(name, name)], atol=TOL, err_msg=name)


def test_every_per_input_score_has_bounds_and_a_reference():
    expected = reference(np.full((1, 2, 3), -np.log(3), np.float32))
    for name in scores(np.zeros((1, 2, 3), np.float32)):
        assert RECORDED.get(name, name) in expected, name
        bounds(RECORDED.get(name, name), 1, 2, 3)
