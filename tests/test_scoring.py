import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.acquire.estimators import bald
from jal.data.mnist import NORMALIZATION
from jal.errors import JalError
from jal.models import FlaxModel, build_model
from jal.models.lenet5 import LeNet, LeNet5, factorised_log_probs, init_params, sample_masks
from jal.scoring import log_probs, mc_log_probs, score_pool

LENET = LeNet5()


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0))


def direct_log_probs(params, images, masks, conv="im2col"):
    """The whole LeNet once per MC sample: the plain vmap over the masks' sample axis."""

    def one_sample(masks_k):
        return jax.nn.log_softmax(LeNet(conv=conv).apply({"params": params}, images, masks_k))

    return jax.vmap(one_sample, in_axes=1, out_axes=1)(masks)


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["im2col", "xla"])
def test_factorised_forward_equals_direct_under_identical_masks(params, conv):
    images = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
    masks = sample_masks(jax.random.key(2), (16, 8))
    direct = direct_log_probs(params, images, masks, conv)
    factorised = factorised_log_probs(params, images, masks)
    assert direct.shape == (16, 8, 10)
    relative = jnp.linalg.norm(direct - factorised) / jnp.linalg.norm(direct)
    assert relative <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["factorised", "factorised_xla", "vmapped"])
def test_every_lenet_scorer_is_the_plain_vmap_over_the_whole_model(params, scorer):
    images = jax.random.normal(jax.random.key(3), (13, 28, 28, 1))
    key = jax.random.key(4)
    got = mc_log_probs(LeNet5(scorer=scorer), params, images, key=key, mc_samples=5, chunk_size=8)
    # Input i's masks come from fold_in(key, i), drawn for its K samples at once.
    masks = jax.vmap(lambda i: sample_masks(jax.random.fold_in(key, i), (5,)))(jnp.arange(13))
    np.testing.assert_allclose(got, direct_log_probs(params, images, masks), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_chunked_scoring_shapes_normalisation_and_keys(params):
    images = jax.random.normal(jax.random.key(3), (37, 28, 28, 1))  # not a multiple of the chunk
    key = jax.random.key(4)
    scored = mc_log_probs(LENET, params, images, key=key, mc_samples=5, chunk_size=16)
    assert scored.shape == (37, 5, 10)
    np.testing.assert_allclose(jax.nn.logsumexp(scored, axis=-1), 0.0, atol=1e-5)
    # MC samples differ from one another (dropout is on), and a new key gives new samples.
    assert not np.allclose(scored[:, 0], scored[:, 1])
    assert not np.allclose(scored, mc_log_probs(LENET, params, images, key=jax.random.key(5), mc_samples=5))
    np.testing.assert_array_equal(scored, mc_log_probs(LENET, params, images, key=key, mc_samples=5, chunk_size=16))
    # An input's masks depend on its position, not on the chunking.
    rechunked = mc_log_probs(LENET, params, images, key=key, mc_samples=5, chunk_size=8)
    np.testing.assert_allclose(rechunked, scored, rtol=1e-5, atol=1e-6)
    shifted = mc_log_probs(LENET, params, images[10:], key=key, mc_samples=5, chunk_size=8, offset=10)
    np.testing.assert_allclose(shifted, scored[10:], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["factorised", "vmapped"])
def test_consistent_masks_are_shared_by_every_input(params, scorer):
    model = LeNet5(scorer=scorer)
    image = jax.random.normal(jax.random.key(6), (1, 28, 28, 1))
    images = jnp.concatenate([image] * 5)
    key = jax.random.key(7)
    consistent = mc_log_probs(model, params, images, key=key, mc_samples=6, chunk_size=2, consistent=True)
    # The same K networks for every input: identical inputs get identical K samples ...
    np.testing.assert_allclose(consistent, jnp.broadcast_to(consistent[:1], consistent.shape), atol=1e-6)
    assert not np.allclose(consistent[0, 0], consistent[0, 1])  # ... which differ from one another,
    independent = mc_log_probs(model, params, images, key=key, mc_samples=6, chunk_size=2)
    assert not np.allclose(independent[0], independent[1])  # while by default each input has its own.


@pytest.mark.slow
def test_deterministic_pass_is_the_eval_mode_model(params):
    images = jax.random.normal(jax.random.key(6), (10, 28, 28, 1))
    expected = jax.nn.log_softmax(LeNet().apply({"params": params}, images))
    np.testing.assert_allclose(log_probs(LENET, params, images, chunk_size=4), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_score_pool_streams_a_memmap_and_equals_scoring_all_at_once(params, tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    memmap = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.uint8, shape=raw.shape)
    memmap[:] = raw
    key = jax.random.key(7)
    normalised = NORMALIZATION.apply(raw)
    expected = bald(mc_log_probs(LENET, params, jnp.asarray(normalised), key=key, mc_samples=4, chunk_size=16))
    # Batches of 32 (the last one padded), device chunks of 16: neither changes the scores.
    streamed = score_pool(LENET, params, np.load(tmp_path / "pool.npy", mmap_mode="r"), key=key, mc_samples=4,
                          chunk_size=16, batch_size=32, normalization=NORMALIZATION)  # fmt: skip
    assert streamed.shape == (50,) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, expected, rtol=1e-4, atol=1e-6)
    floats = score_pool(LENET, params, normalised, key=key, mc_samples=4, chunk_size=16, batch_size=32)
    np.testing.assert_allclose(floats, streamed, rtol=1e-5, atol=1e-6)
    with pytest.raises(JalError, match="empty"):
        score_pool(LENET, params, normalised[:0], key=key)
    with pytest.raises(JalError, match="raw ones with their normalization"):
        score_pool(LENET, params, raw, key=key)
    with pytest.raises(JalError, match="the model takes"):
        score_pool(LENET, params, normalised[:, :20], key=key)
    with pytest.raises(JalError, match="unknown estimator"):
        score_pool(LENET, params, normalised, key=key, estimator="magic")


def one_pass_at_a_time(model: FlaxModel, params, inputs, key, mc_samples):
    """MC dropout as K separate forward passes per input, in a Python loop: the reference for the vmapped path."""
    out = np.empty((len(inputs), mc_samples, model.num_classes), np.float32)
    for i in range(len(inputs)):
        sample_keys = jax.random.split(jax.random.fold_in(key, i), mc_samples)
        for k in range(mc_samples):
            logits = model.module.apply(
                {"params": params}, inputs[i : i + 1], train=True, rngs={"dropout": sample_keys[k]}
            )
            out[i, k] = jax.nn.log_softmax(logits[0])
    return out


@pytest.mark.parametrize(
    "name, shape, settings",
    [("mlp", (20,), {"hidden_sizes": (16, 12)}), ("mlp", (6, 5), {"hidden_sizes": (8,), "dropout_rate": 0.1}),
     ("cnn", (8, 8, 3), {})],
)  # fmt: skip
@pytest.mark.slow
def test_the_vmapped_path_is_k_forward_passes_of_the_module(name, shape, settings):
    model = build_model(name, shape, 4, **settings)
    params = model.init(jax.random.key(0))
    inputs = jax.random.normal(jax.random.key(1), (5, *shape))
    key = jax.random.key(2)
    got = mc_log_probs(model, params, inputs, key=key, mc_samples=6, chunk_size=4)
    np.testing.assert_allclose(got, one_pass_at_a_time(model, params, inputs, key, 6), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[:, 0], got[:, 1])  # dropout is on
    # Off, it is the module's eval forward.
    deterministic = jax.nn.log_softmax(model.module.apply({"params": params}, inputs))
    np.testing.assert_allclose(log_probs(model, params, inputs, chunk_size=4), deterministic, rtol=1e-5, atol=1e-6)


def compiled_flops(model, params, inputs, mc_samples):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(len(inputs)))
    run = jax.jit(lambda p, x, k: model.mc_log_probs(p, x, k, mc_samples))
    return run.lower(params, inputs, keys).compile().cost_analysis()["flops"]


@pytest.mark.slow
def test_the_layers_before_the_first_dropout_are_computed_once_per_input():
    # The cnn's convolutions and first dense layer come before its dropout: 98% of one
    # forward pass. Were they vmapped over the K draws, 8 draws would cost about 8 passes.
    cnn = build_model("cnn", (32, 32, 3), 10)
    params = cnn.init(jax.random.key(0))
    inputs = jnp.zeros((4, 32, 32, 3))
    one, eight = compiled_flops(cnn, params, inputs, 1), compiled_flops(cnn, params, inputs, 8)
    assert eight < 1.05 * one
    # The mlp's first layer (256 x 128) is once per input, the rest (128 x 128 + 128 x 10) per draw.
    mlp = build_model("mlp", (256,), 10)
    params = mlp.init(jax.random.key(0))
    per_draw = compiled_flops(mlp, params, jnp.zeros((4, 256)), 9) - compiled_flops(mlp, params, jnp.zeros((4, 256)), 1)
    per_draw /= 4 * 8
    assert 2 * (128 * 128 + 128 * 10) <= per_draw < 2 * (128 * 128 + 128 * 10) + 2 * 256 * 128 / 4


class NoDropoutPrefix(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
        return nn.Dense(3)(x)


@pytest.mark.slow
def test_any_flax_module_with_dropout_is_a_model():
    model = FlaxModel((5,), 3, module=NoDropoutPrefix())  # flax's own Dropout
    params = model.init(jax.random.key(0))
    inputs = jax.random.normal(jax.random.key(1), (9, 5))
    got = mc_log_probs(model, params, inputs, key=jax.random.key(2), mc_samples=7, chunk_size=4)
    want = one_pass_at_a_time(model, params, inputs, jax.random.key(2), 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    consistent = mc_log_probs(model, params, jnp.stack([inputs[0]] * 3), key=jax.random.key(2), mc_samples=7,
                              consistent=True)  # fmt: skip
    np.testing.assert_allclose(consistent, jnp.broadcast_to(consistent[:1], consistent.shape), atol=1e-6)


class WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(2)(nn.BatchNorm(use_running_average=not train)(x))


@pytest.mark.slow
def test_a_model_with_mutable_state_is_refused():
    with pytest.raises(JalError, match="mutable state"):
        FlaxModel((4,), 2, module=WithBatchNorm()).init(jax.random.key(0))
