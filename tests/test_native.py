import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jal.native
from jal.errors import JalError
from jal.models import convs
from jal.models.lenet5 import (
    DROPOUT_RATE,
    DropoutMasks,
    LeNet5,
    channel_major_logits,
    conv2_block_xla,
    factorised_log_probs,
    init_params,
    masked_conv2_xla,
    sample_masks,
)
from jal.scoring import mc_log_probs
from tests.test_scoring import direct_log_probs

needs_kernel = pytest.mark.skipif(
    os.environ.get("JAL_NATIVE") == "0" or jal.native.compiler() is None or jax.default_backend() != "cpu",
    reason="the native CPU kernel is off (JAL_NATIVE=0), there is no C++ compiler, or the backend is not the CPU",
)


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights give large, spread activations, so summation order shows if it matters.
    return jax.tree.map(lambda p: 3.0 * p, init_params(jax.random.key(0)))


@needs_kernel
def test_the_kernel_builds_here():
    assert jal.native.available()


def native_and_xla(params, z, masks):
    kernel, bias = params["conv2"]["kernel"], params["conv2"]["bias"]
    native = jax.jit(jal.native.conv2_block, static_argnames="rate")
    return native(z, kernel, bias, masks.conv1, masks.conv2, rate=DROPOUT_RATE), conv2_block_xla(z, kernel, bias, masks)


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("num_inputs", [1, 7])  # one input: no helper thread; seven: shared out unevenly
@pytest.mark.parametrize("num_samples", [1, 5, 16, 20, 40])
def test_native_conv2_block_equals_xla_ops_under_identical_masks(params, num_inputs, num_samples):
    z = jax.nn.relu(jax.random.normal(jax.random.key(1), (num_inputs, 32, 12, 12)))
    masks = sample_masks(jax.random.key(2), (num_inputs, num_samples))
    native, xla = native_and_xla(params, z, masks)
    assert native.shape == xla.shape == (num_inputs, num_samples, 1024)
    assert float(jnp.linalg.norm(native - xla) / jnp.linalg.norm(xla)) <= 1e-6
    # A dropped conv2 channel is exactly zero, whatever the rest.
    dropped = jnp.repeat(masks.conv2 == 0, 16, axis=-1)
    assert bool(jnp.all(native[dropped] == 0)) and bool(jnp.any(native[~dropped] != 0))


@pytest.mark.slow
@needs_kernel
def test_native_conv2_block_with_every_conv1_channel_kept_or_dropped(params):
    z = jax.nn.relu(jax.random.normal(jax.random.key(3), (2, 32, 12, 12)))
    masks = sample_masks(jax.random.key(4), (2, 2))
    kept_or_dropped = jnp.array([2.0, 0.0])[:, None, None] * jnp.ones((2, 2, 32))  # input 0 keeps all, input 1 none
    masks = masks._replace(conv1=kept_or_dropped, conv2=jnp.full((2, 2, 64), 2.0))
    native, xla = native_and_xla(params, z, masks)
    np.testing.assert_allclose(native, xla, rtol=1e-5, atol=1e-5)
    # All dropped: conv2 sees zeros, so every feature is 2 * relu(bias).
    bias = params["conv2"]["bias"]
    np.testing.assert_array_equal(native[1], jnp.broadcast_to(2 * jnp.repeat(jax.nn.relu(bias), 16), (2, 1024)))


@pytest.mark.slow
@needs_kernel
def test_native_forward_equals_direct_forward_under_identical_masks(params):
    images = jax.random.normal(jax.random.key(3), (9, 28, 28, 1))
    masks = sample_masks(jax.random.key(4), (9, 12))
    direct = direct_log_probs(params, images, masks)
    native = jax.jit(factorised_log_probs)(params, images, masks)
    xla = jax.jit(factorised_log_probs, static_argnames="native")(params, images, masks, native=False)
    for got in (native, xla):
        assert float(jnp.linalg.norm(direct - got) / jnp.linalg.norm(direct)) <= 1e-5


@pytest.mark.slow
@needs_kernel
def test_chunked_scoring_is_the_same_with_and_without_the_kernel(params):
    images = jax.random.normal(jax.random.key(5), (37, 28, 28, 1))
    key = jax.random.key(6)
    with_kernel = mc_log_probs(LeNet5(), params, images, key=key, mc_samples=8, chunk_size=16)
    without = mc_log_probs(LeNet5(scorer="factorised_xla"), params, images, key=key, mc_samples=8, chunk_size=16)
    np.testing.assert_allclose(with_kernel, without, rtol=1e-4, atol=1e-4)
    again = mc_log_probs(LeNet5(), params, images, key=key, mc_samples=8, chunk_size=16)
    np.testing.assert_array_equal(with_kernel, again)


@needs_kernel
def test_gpu_and_tpu_code_never_calls_the_cpu_kernel(params):
    images = jnp.zeros((8, 28, 28, 1))
    score = jax.jit(lambda p, x: mc_log_probs(LeNet5(), p, x, key=jax.random.key(0), mc_samples=4, chunk_size=8))
    allow = [jax.export.DisabledSafetyCheck.custom_call("jal_mc_conv2")]
    for platforms, calls in ((["cpu"], True), (["cuda"], False), (["tpu"], False)):
        exported = jax.export.export(score, platforms=platforms, disabled_checks=allow)(params, images)
        assert ("jal_mc_conv2" in exported.mlir_module()) == calls, platforms


def masked_conv2_value_and_grads(conv2, params, z, masks, cotangent):
    def run(z, kernel):
        return conv2(z, masks.conv1, kernel, masks.conv2)

    out, vjp = jax.vjp(run, z, params["conv2"]["kernel"])
    return (out, *vjp(cotangent))


def relative_error(got, want):
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("num_inputs", [1, 7, 64])  # fewer inputs than blocks of the weight gradient, and more
def test_native_masked_conv2_and_its_gradients_equal_xla_ops(params, num_inputs):
    z = jax.nn.relu(jax.random.normal(jax.random.key(7), (32, num_inputs, 12, 12)))
    masks = sample_masks(jax.random.key(8), (num_inputs,))
    cotangent = jax.random.normal(jax.random.key(9), (num_inputs, 64, 8, 8))
    run = jax.jit(masked_conv2_value_and_grads, static_argnums=0)
    native = run(jal.native.masked_conv2, params, z, masks, cotangent)
    xla = run(masked_conv2_xla, params, z, masks, cotangent)
    for name, got, want in zip(("values", "z gradient", "kernel gradient"), native, xla, strict=True):
        assert got.shape == want.shape, name
        assert relative_error(got, want) <= 1e-6, name
    values, z_grad, _ = native
    # Channels a mask drops are exactly zero: conv2's outputs, and the gradient of its inputs.
    assert bool(jnp.all(values.transpose(1, 0, 2, 3)[(masks.conv2 == 0).T] == 0))
    assert bool(jnp.all(z_grad[(masks.conv1 == 0).T] == 0)) and bool(jnp.any(z_grad != 0))


@pytest.mark.slow
@needs_kernel
def test_native_masked_conv2_with_every_channel_kept_or_dropped_and_any_mask_scale(params):
    z = jax.nn.relu(jax.random.normal(jax.random.key(10), (32, 3, 12, 12)))
    # Sample 0 keeps everything (scaled by 1.5), sample 1 drops every conv1 channel,
    # sample 2 every conv2 channel.
    conv1 = jnp.array([1.5, 0.0, 2.0])[:, None] * jnp.ones((3, 32))
    conv2 = jnp.array([0.7, 2.0, 0.0])[:, None] * jnp.ones((3, 64))
    masks = DropoutMasks(conv1, conv2, jnp.ones((3, 128)))
    cotangent = jax.random.normal(jax.random.key(11), (3, 64, 8, 8))
    native = masked_conv2_value_and_grads(jal.native.masked_conv2, params, z, masks, cotangent)
    xla = masked_conv2_value_and_grads(masked_conv2_xla, params, z, masks, cotangent)
    for got, want in zip(native, xla, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    values, z_grad, _ = native
    assert bool(jnp.all(values[1:] == 0)) and bool(jnp.all(z_grad[:, 1:] == 0))


@pytest.mark.slow
@needs_kernel
def test_training_logits_and_gradients_are_the_same_with_the_native_conv2(params):
    images = jax.random.normal(jax.random.key(12), (16, 28, 28, 1))
    labels = jnp.arange(16) % 10

    key = jax.random.key(13)
    masks = sample_masks(key, (16,))  # what the model draws from the key

    def loss(p, conv):
        logits = LeNet5(conv=conv).logits(p, images, key)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), labels]), logits

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    (native, native_logits), (im2col, im2col_logits) = grad(params, "native"), grad(params, "im2col")
    assert relative_error(native_logits, im2col_logits) <= 1e-6
    for layer in params:
        for name in params[layer]:
            assert relative_error(native[layer][name], im2col[layer][name]) <= 1e-5, (layer, name)
    # channel_major_logits with XLA's masked conv2 is the same function again.
    np.testing.assert_allclose(channel_major_logits(params, images, masks), im2col_logits, rtol=1e-5, atol=1e-4)


def test_without_the_kernel_training_falls_back_to_im2col_and_refuses_native(monkeypatch, params):
    monkeypatch.setattr(jal.native, "available", lambda: False)
    images, key = jnp.zeros((2, 28, 28, 1)), jax.random.key(14)
    assert convs.default_conv(native=True) in ("im2col", "xla")
    assert LeNet5(conv="auto").logits(params, images, key).shape == (2, 10)
    with pytest.raises(JalError, match="conv 'native' needs the native CPU kernel"):
        LeNet5(conv="native").logits(params, images, key)


@pytest.mark.parametrize("compiler", ["false", "true"])  # fails; "succeeds" without building anything
def test_without_a_working_compiler_the_scorer_falls_back_to_xla_ops(monkeypatch, tmp_path, compiler):
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", compiler)
    with pytest.warns(UserWarning, match="unavailable, using XLA ops"):
        assert jal.native.available.__wrapped__() is False
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("tmp*"))  # nothing half-built left behind
    monkeypatch.setenv("JAL_NATIVE", "0")
    assert jal.native.available.__wrapped__() is False


@pytest.mark.slow
def test_a_failed_build_is_reported_and_not_retried(monkeypatch, tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-c++"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = --version ] && {{ echo fake 1.0; exit 0; }}\n'
        'echo "mc_conv2.cc:1: error: no such thing" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    for expected in ("no such thing", "an earlier build failed"):
        with pytest.warns(UserWarning, match=expected):
            assert jal.native.available.__wrapped__() is False
    compiles = [line for line in calls.read_text().splitlines() if line != "--version"]
    assert len(compiles) == 1  # the second call read the failure instead of compiling again
