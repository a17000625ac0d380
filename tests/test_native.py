import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jal.native
from jal.model import init_params, sample_masks
from jal.scoring import conv2_block_xla, mc_log_probs, mc_log_probs_direct, mc_log_probs_factorised

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
    return jax.jit(jal.native.conv2_block)(z, kernel, bias, masks), jax.jit(conv2_block_xla)(z, kernel, bias, masks)


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


@needs_kernel
def test_gpu_and_tpu_code_never_calls_the_cpu_kernel(params):
    images = jnp.zeros((8, 28, 28, 1))
    score = jax.jit(lambda p, x: mc_log_probs(p, x, key=jax.random.key(0), num_samples=4, chunk_size=8))
    allow = [jax.export.DisabledSafetyCheck.custom_call(jal.native.TARGET)]
    for platforms, calls in ((["cpu"], True), (["cuda"], False), (["tpu"], False)):
        exported = jax.export.export(score, platforms=platforms, disabled_checks=allow)(params, images)
        assert (jal.native.TARGET in exported.mlir_module()) == calls, platforms


@pytest.mark.parametrize("compiler", ["false", "true"])  # fails; "succeeds" without building anything
def test_without_a_working_compiler_the_scorer_falls_back_to_xla_ops(monkeypatch, tmp_path, compiler):
    monkeypatch.setenv("JAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", compiler)
    with pytest.warns(UserWarning, match="unavailable, using XLA ops"):
        assert jal.native.available.__wrapped__() is False
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("tmp*"))  # nothing half-built left behind
    monkeypatch.setenv("JAL_NATIVE", "0")
    assert jal.native.available.__wrapped__() is False


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
