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


def test_consistent_masks_are_shared_by_every_input(params):
    image = jax.random.normal(jax.random.key(6), (1, 28, 28, 1))
    images = jnp.concatenate([image] * 5)
    key = jax.random.key(7)
    consistent = mc_log_probs(params, images, key=key, num_samples=6, chunk_size=2, consistent=True)
    # The same K networks for every input: identical inputs get identical K samples ...
    np.testing.assert_allclose(consistent, jnp.broadcast_to(consistent[:1], consistent.shape), atol=1e-6)
    assert not np.allclose(consistent[0, 0], consistent[0, 1])  # ... which differ from one another,
    independent = mc_log_probs(params, images, key=key, num_samples=6, chunk_size=2)
    assert not np.allclose(independent[0], independent[1])  # while by default each input has its own.
    # Both scorers implement consistent masks.
    direct = mc_log_probs(params, images, key=key, num_samples=6, chunk_size=2, consistent=True, method="direct")
    np.testing.assert_allclose(direct, consistent, rtol=1e-4, atol=1e-5)


def test_deterministic_pass_is_the_eval_mode_model(params):
    images = jax.random.normal(jax.random.key(6), (10, 28, 28, 1))
    from jal.model import LeNet

    expected = jax.nn.log_softmax(LeNet().apply({"params": params}, images))
    np.testing.assert_allclose(deterministic_log_probs(params, images, chunk_size=4), expected, rtol=1e-5, atol=1e-6)


def test_score_pool_streams_a_memmap_and_equals_scoring_all_at_once(params, tmp_path):
    from jal.data import normalize
    from jal.errors import JalError
    from jal.estimators import bald
    from jal.scoring import score_pool

    raw = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    memmap = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.uint8, shape=raw.shape)
    memmap[:] = raw
    key = jax.random.key(7)
    expected = bald(mc_log_probs(params, jnp.asarray(normalize(raw)), key=key, num_samples=4, chunk_size=16))
    # Batches of 32 (the last one padded), device chunks of 16: neither changes the scores.
    streamed = score_pool(params, np.load(tmp_path / "pool.npy", mmap_mode="r"), key=key, num_samples=4,
                          chunk_size=16, batch_size=32)  # fmt: skip
    assert streamed.shape == (50,) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, expected, rtol=1e-4, atol=1e-6)
    floats = score_pool(params, normalize(raw), key=key, num_samples=4, chunk_size=16, batch_size=32)
    np.testing.assert_allclose(floats, streamed, rtol=1e-5, atol=1e-6)
    with pytest.raises(JalError, match="empty"):
        score_pool(params, raw[:0], key=key)
    with pytest.raises(JalError, match="expected uint8"):
        score_pool(params, raw.astype(np.float64), key=key)
