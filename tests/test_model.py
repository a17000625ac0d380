import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.errors import JalError
from jal.models import build_model, convs, default_settings
from jal.models import lenet5 as model
from jal.models.lenet5 import DropoutMasks, LeNet, LeNet5, init_params, sample_masks


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (8, 28, 28, 1))


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert convs.resolve_conv("im2col", native=True) == "im2col"
    assert convs.resolve_conv("auto", native=True) == convs.default_conv(native=True)
    assert convs.resolve_conv("auto", native=False) == "im2col"  # on the CPU, for a model without a native kernel
    with pytest.raises(JalError, match="unknown conv 'fft'"):
        convs.resolve_conv("fft", native=False)
    with pytest.raises(JalError, match="unknown conv 'fft'"):
        LeNet5(conv="fft")


def test_im2col_with_same_padding_equals_xla():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(convs.im2col_conv(x, kernel, (1, 1), "SAME"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_models_by_name_with_their_settings():
    assert default_settings("mlp") == {"hidden_sizes": (128, 128), "dropout_rate": 0.5}
    mlp = build_model("mlp", (7, 3), 4, hidden_sizes=(9,))
    params = mlp.init(jax.random.key(0))
    assert params["Dense_0"]["kernel"].shape == (21, 9) and params["Dense_1"]["kernel"].shape == (9, 4)
    lenet = build_model("lenet5", (28, 28, 1), 3)
    assert lenet.init(jax.random.key(0))["fc2"]["kernel"].shape == (128, 3)  # any number of classes
    assert hash(mlp) == hash(build_model("mlp", (7, 3), 4, hidden_sizes=(9,)))  # a static argument of jit
    for name, shape, settings, message in [
        ("lenet5", (32, 32, 3), {}, "lenet5 takes 28x28x1 images"),
        ("cnn", (10, 10, 3), {}, "divisible by 4"),
        ("cnn", (8, 8, 3), {"conv": "native"}, "conv 'native' is lenet5's"),
        ("mlp", (4,), {"hidden_sizes": ()}, "at least one layer"),
        ("mlp", (4,), {"dropout_rate": 1.0}, r"dropout rate 1.0 must be in \[0, 1\)"),
        ("mlp", (4,), {"conv": "im2col"}, "model mlp has no setting conv"),
        ("transformer", (4,), {}, "unknown model 'transformer'"),
    ]:
        with pytest.raises(JalError, match=message):
            build_model(name, shape, 10, **settings)


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
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (JAL_WITH_TORCH=1 bin/test installs it)")
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
