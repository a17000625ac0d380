import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jal.native
from jal.model import init_params, sample_masks
from jal.scoring import conv2_block_xla, mc_log_probs, mc_log_probs_direct, mc_log_probs_factorised

needs_kernel = pytest.mark.skipif(
    os.environ.get("JAL_NATIVE") == "0" or not (os.environ.get("CXX") or shutil.which("c++")),
    reason="the native kernel is off (JAL_NATIVE=0) or there is no C++ compiler",
)


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights give large, spread activations, so summation order shows if it matters.
    return jax.tree.map(lambda p: 3.0 * p, init_params(jax.random.key(0)))


@needs_kernel
def test_the_kernel_builds_here():
    assert jal.native.available()


@needs_kernel
@pytest.mark.parametrize("num_samples", [1, 5, 16, 20, 40])  # around the kernel's blocks of 16
def test_native_conv2_block_equals_xla_ops_under_identical_masks(params, num_samples):
    z = jax.nn.relu(jax.random.normal(jax.random.key(1), (7, 32, 12, 12)))
    masks = sample_masks(jax.random.key(2), (7, num_samples))
    kernel, bias = params["conv2"]["kernel"], params["conv2"]["bias"]
    native = jax.jit(jal.native.conv2_block)(z, kernel, bias, masks)
    xla = jax.jit(conv2_block_xla)(z, kernel, bias, masks)
    assert native.shape == xla.shape == (7, num_samples, 1024)
    assert float(jnp.linalg.norm(native - xla) / jnp.linalg.norm(xla)) <= 1e-6
    # The conv2 mask zeroes whole channels, and ReLU leaves no negative feature.
    np.testing.assert_array_equal(native == 0, xla == 0)


@needs_kernel
def test_native_forward_equals_direct_forward_under_identical_masks(params):
    images = jax.random.normal(jax.random.key(3), (9, 28, 28, 1))
    masks = sample_masks(jax.random.key(4), (9, 12))
    direct = mc_log_probs_direct(params, images, masks)
    native = jax.jit(mc_log_probs_factorised)(params, images, masks)
    xla = jax.jit(mc_log_probs_factorised, static_argnames="native")(params, images, masks, native=False)
    for got in (native, xla):
        assert float(jnp.linalg.norm(direct - got) / jnp.linalg.norm(direct)) <= 1e-5


@needs_kernel
def test_chunked_scoring_is_the_same_with_and_without_the_kernel(params):
    images = jax.random.normal(jax.random.key(5), (37, 28, 28, 1))
    key = jax.random.key(6)
    with_kernel = mc_log_probs(params, images, key=key, num_samples=8, chunk_size=16)
    without = mc_log_probs(params, images, key=key, num_samples=8, chunk_size=16, native=False)
    np.testing.assert_allclose(with_kernel, without, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(with_kernel, mc_log_probs(params, images, key=key, num_samples=8, chunk_size=16))


@pytest.mark.parametrize("compiler", ["false", "true"])  # fails; "succeeds" without building anything
def test_without_a_working_compiler_the_scorer_falls_back_to_xla_ops(monkeypatch, tmp_path, compiler):
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", compiler)
    with pytest.warns(UserWarning, match="did not build"):
        assert jal.native.available.__wrapped__() is False
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind
    monkeypatch.setenv("JAL_NATIVE", "0")
    assert jal.native.available.__wrapped__() is False
