import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import model
from jal.model import DropoutMasks, LeNet, init_params, sample_masks


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (8, 28, 28, 1))


def test_parameter_count(params):
    assert model.count_params(params) == 184_586


def test_init_is_pytorch_default(params):
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, filling most of the range.
    for layer, fan_in in {"conv1": 25, "conv2": 800, "fc1": 1024, "fc2": 128}.items():
        bound = 1 / np.sqrt(fan_in)
        for leaf in params[layer].values():
            leaf = np.asarray(leaf)
            assert np.abs(leaf).max() <= bound, layer
            if leaf.size >= 500:  # enough draws to see the uniform's spread
                assert np.abs(leaf).max() > 0.99 * bound, layer
                np.testing.assert_allclose(leaf.std(), bound / np.sqrt(3), rtol=0.1, err_msg=layer)


def test_im2col_and_xla_convs_agree(params, images):
    masks = sample_masks(jax.random.key(2), (images.shape[0],))
    labels = jnp.arange(images.shape[0]) % 10

    def loss(p, conv):
        logits = LeNet(conv=conv).apply({"params": p}, images, masks)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels]), logits

    (loss_a, logits_a), grads_a = jax.value_and_grad(loss, has_aux=True)(params, "im2col")
    (loss_b, logits_b), grads_b = jax.value_and_grad(loss, has_aux=True)(params, "xla")
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_channel_major_layout_is_the_same_function_with_the_same_gradients(params, images):
    masks = sample_masks(jax.random.key(5), (images.shape[0],))
    labels = jnp.arange(images.shape[0]) % 10

    def loss(p, forward):
        logits = forward(p, images, masks)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels]), logits

    lenet = lambda p, x, m: LeNet(conv="im2col").apply({"params": p}, x, m)  # noqa: E731
    (loss_a, logits_a), grads_a = jax.value_and_grad(loss, has_aux=True)(params, lenet)
    (loss_b, logits_b), grads_b = jax.value_and_grad(loss, has_aux=True)(params, model.channel_major_logits)
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window():
    x = jax.random.normal(jax.random.key(6), (3, 8, 6))
    weights = jax.random.normal(jax.random.key(7), (3, 4, 3))
    reference = lambda x: x.reshape(3, 4, 2, 3, 2).max(axis=(2, 4))  # noqa: E731, XLA's own max and gradient
    np.testing.assert_array_equal(model.max_pool_2x2_hw(x), reference(x))
    grad = jax.grad(lambda x: jnp.sum(model.max_pool_2x2_hw(x) * weights))(x)
    np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(reference(x) * weights))(x))  # no ties
    # Ties: one window all equal, one with its two bottom values equal and largest.
    tied = jnp.zeros((1, 2, 4)).at[0, 1, 2:].set(1.0)
    grad = jax.grad(lambda x: jnp.sum(model.max_pool_2x2_hw(x)))(tied)
    np.testing.assert_array_equal(grad[0], [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])


def test_unknown_conv_is_refused():
    assert model.resolve_conv("im2col") == "im2col"
    assert model.resolve_conv("auto") == model.default_conv()
    with pytest.raises(ValueError, match="unknown conv 'fft'"):
        model.resolve_conv("fft")


def test_masks_drop_whole_channels_and_scale_survivors_by_two():
    masks = sample_masks(jax.random.key(3), (500,))
    assert [m.shape for m in masks] == [(500, 32), (500, 64), (500, 128)]  # one value per channel
    for m in masks:
        assert set(np.unique(np.asarray(m))) == {0.0, 2.0}
        assert abs(float(m.mean()) - 1.0) < 0.02  # keep probability 0.5


def _ones_masks(n):
    return DropoutMasks(jnp.full((n, 32), 2.0), jnp.full((n, 64), 2.0), jnp.full((n, 128), 2.0))


def test_dropout2d_drops_a_channel_everywhere(params, images):
    # Dropping conv1 channel c for a sample = that sample seeing a model whose filter c is 0.
    n, c = images.shape[0], 5
    masks = _ones_masks(n)
    dropped = masks._replace(conv1=masks.conv1.at[:, c].set(0.0))
    zeroed = jax.tree_util.tree_map(lambda x: x, params)
    zeroed["conv1"] = {
        "kernel": params["conv1"]["kernel"].at[..., c].set(0.0),
        "bias": params["conv1"]["bias"].at[c].set(0.0),
    }
    np.testing.assert_allclose(
        LeNet().apply({"params": params}, images, dropped),
        LeNet().apply({"params": zeroed}, images, masks),
        rtol=1e-5,
        atol=1e-5,
    )
    # And the mask of one sample leaves the others alone.
    partial = masks._replace(conv1=masks.conv1.at[0, c].set(0.0))
    a, b = LeNet().apply({"params": params}, images, partial), LeNet().apply({"params": params}, images, masks)
    assert not np.allclose(a[0], b[0])
    np.testing.assert_array_equal(a[1:], b[1:])


def test_torch_weights_port_both_ways(params, images):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TorchLeNet

    torch.manual_seed(0)
    reference = TorchLeNet().eval()
    ported = model.params_from_torch(reference.state_dict())
    nchw = torch.from_numpy(np.array(images).reshape(-1, 1, 28, 28))  # one channel: NHWC = NCHW
    with torch.no_grad():
        expected = reference(nchw).numpy()
    np.testing.assert_allclose(LeNet().apply({"params": ported}, images), expected, rtol=1e-5, atol=1e-5)
    # And back: jal's weights loaded into PyTorch give jal's logits.
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.params_to_torch(params).items()})
    with torch.no_grad():
        logits = reference(nchw).numpy()
    np.testing.assert_allclose(LeNet().apply({"params": params}, images), logits, rtol=1e-5, atol=1e-5)
