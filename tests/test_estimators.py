import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jal.acquire import estimators as est


def log(p):
    with np.errstate(divide="ignore"):
        return jnp.log(jnp.asarray(p, jnp.float32))


def test_hand_computed_values():
    # Two MC samples that disagree completely: mean [.5, .5].
    lp = log([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(est.predictive_entropy(lp), [np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(est.expected_entropy(lp), [0.0], atol=1e-7)
    np.testing.assert_allclose(est.bald(lp), [np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(est.least_confidence(lp), [0.5], rtol=1e-6)
    np.testing.assert_allclose(est.margin(lp), [1.0], rtol=1e-6)
    np.testing.assert_allclose(est.variation_ratio(lp), [0.5])
    np.testing.assert_allclose(est.mean_std(lp), [0.5], rtol=1e-6)

    # p1 = [.9, .1], p2 = [.5, .5], p3 = [.7, .3]: mean [.7, .3].
    lp = log([[[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]]])
    h = lambda p: -sum(x * np.log(x) for x in p)  # noqa: E731
    np.testing.assert_allclose(
        est.bald(lp), [h([0.7, 0.3]) - np.mean([h([0.9, 0.1]), h([0.5, 0.5]), h([0.7, 0.3])])], rtol=1e-5
    )
    np.testing.assert_allclose(est.least_confidence(lp), [0.3], rtol=1e-5)
    np.testing.assert_allclose(est.margin(lp), [1 - 0.4], rtol=1e-5)
    np.testing.assert_allclose(est.variation_ratio(lp), [0.0])  # argmax ties go to class 0 in every sample
    np.testing.assert_allclose(est.mean_std(lp), [np.std([0.9, 0.5, 0.7])], rtol=1e-5)


@pytest.mark.slow
def test_bald_is_zero_when_samples_agree_and_entropy_of_uniform_is_log_c():
    p = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (20, 1, 10)))
    agree = jnp.repeat(p, 8, axis=1)
    np.testing.assert_allclose(est.bald(agree), 0.0, atol=1e-6)
    uniform = jnp.full((3, 4, 10), -jnp.log(10.0))
    np.testing.assert_allclose(est.predictive_entropy(uniform), np.log(10), rtol=1e-6)


def test_no_nan_with_zero_probabilities():
    lp = log([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    for name, fn in est.ESTIMATORS.items():
        assert np.isfinite(np.asarray(fn(lp))).all(), name
    np.testing.assert_allclose(est.bald(lp), [0.0, np.log(2)], atol=1e-6)


def test_nan_inputs_stay_nan():
    lp = jnp.full((2, 3, 4), jnp.nan)
    for name, fn in est.ESTIMATORS.items():
        if name != "variation_ratio":  # argmax of NaNs is a vote like any other
            assert np.isnan(np.asarray(fn(lp))).all(), name


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (4, 6, 5), elements=st.floats(-30, 30, width=32)))
def test_information_inequalities(logits):
    lp = jax.nn.log_softmax(jnp.asarray(logits))
    bald, entropy = est.bald(lp), est.predictive_entropy(lp)
    assert (bald >= 0).all() and (bald <= entropy + 1e-5).all() and (entropy <= np.log(5) + 1e-5).all()
    for name, fn in est.ESTIMATORS.items():
        scores = np.asarray(fn(lp))
        assert scores.shape == (4,) and np.isfinite(scores).all(), name
        assert (scores >= -1e-6).all(), name


def test_accuracy_and_nll_from_mean_probabilities():
    # Mean of [.9, .1] and [.3, .7] is [.6, .4].
    lp = log([[[0.9, 0.1], [0.3, 0.7]], [[0.2, 0.8], [0.2, 0.8]]])
    accuracy, nll = est.accuracy_and_nll(lp, jnp.array([0, 0]))
    assert float(accuracy) == pytest.approx(0.5)
    assert float(nll) == pytest.approx(-(np.log(0.6) + np.log(0.2)) / 2, rel=1e-5)
    accuracy, _ = est.accuracy_and_nll(lp[:, 0], jnp.array([0, 1]))  # one deterministic pass [N, C]
    assert float(accuracy) == 1.0


@pytest.mark.slow
class EstimatorsUnderJitAndWithout(chex.TestCase):
    """Every estimator is a pure function: the same values traced under jit and run eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_every_estimator(self):
        log_probs = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (7, 5, 4)) * 3)
        for name, estimator in est.ESTIMATORS.items():
            scores = self.variant(estimator)(log_probs)
            chex.assert_shape(scores, (7,))
            chex.assert_tree_all_finite(scores)
            np.testing.assert_allclose(scores, jax.jit(estimator)(log_probs), rtol=1e-5, atol=1e-6, err_msg=name)
        with pytest.raises(AssertionError, match="rank"):
            self.variant(est.bald)(log_probs[0])  # [K, C] is not a batch
