import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.model import init_params, sample_masks
from jal.scoring import deterministic_log_probs, mc_log_probs, mc_log_probs_direct, mc_log_probs_factorised


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0))


@pytest.mark.parametrize("conv", ["im2col", "xla"])
def test_factorised_forward_equals_direct_under_identical_masks(params, conv):
    images = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
    masks = sample_masks(jax.random.key(2), (16, 8))
    direct = mc_log_probs_direct(params, images, masks, conv=conv)
    factorised = mc_log_probs_factorised(params, images, masks)
    assert direct.shape == (16, 8, 10)
    relative = jnp.linalg.norm(direct - factorised) / jnp.linalg.norm(direct)
    assert relative <= 1e-5


def test_chunked_scoring_shapes_normalisation_and_methods(params):
    images = jax.random.normal(jax.random.key(3), (37, 28, 28, 1))  # not a multiple of the chunk
    key = jax.random.key(4)
    factorised = mc_log_probs(params, images, key=key, num_samples=5, chunk_size=16)
    direct = mc_log_probs(params, images, key=key, num_samples=5, chunk_size=16, method="direct")
    assert factorised.shape == (37, 5, 10)
    np.testing.assert_allclose(jax.nn.logsumexp(factorised, axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(factorised, direct, rtol=1e-4, atol=1e-5)  # the same masks from the same key
    # MC samples differ from one another (dropout is on), and a new key gives new samples.
    assert not np.allclose(factorised[:, 0], factorised[:, 1])
    assert not np.allclose(
        factorised, mc_log_probs(params, images, key=jax.random.key(5), num_samples=5, chunk_size=16)
    )
    np.testing.assert_array_equal(factorised, mc_log_probs(params, images, key=key, num_samples=5, chunk_size=16))
    # An input's masks depend on its position, not on the chunking.
    rechunked = mc_log_probs(params, images, key=key, num_samples=5, chunk_size=8)
    np.testing.assert_allclose(rechunked, factorised, rtol=1e-5, atol=1e-6)


def test_deterministic_pass_is_the_eval_mode_model(params):
    images = jax.random.normal(jax.random.key(6), (10, 28, 28, 1))
    from jal.model import LeNet

    expected = jax.nn.log_softmax(LeNet().apply({"params": params}, images))
    np.testing.assert_allclose(deterministic_log_probs(params, images, chunk_size=4), expected, rtol=1e-5, atol=1e-6)
