"""Checks of the Python API's arguments: a one-line `JalError` naming the argument and the fix.

They run in Python before anything is dispatched, so the compiled paths pay nothing.
Under a trace (a public function called inside one's own `jax.jit`) they check what is
static, shapes, dtypes and sizes, and leave the values, which are not known yet, alone.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jal.errors import JalError


@jax.jit
def _all_finite(inputs: jax.Array) -> jax.Array:
    return jnp.isfinite(inputs).all()  # one fused pass on the device


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sizes(**sizes) -> None:
    """Refuses counts and sizes that are not whole numbers >= 1: `check_sizes(mc_samples=k, chunk_size=c)`."""
    for name, value in sizes.items():
        if not _is_int(value) or value < 1:
            raise JalError(f"`{name}` {value!r:.40} must be a whole number of at least 1")


def check_seed(seed) -> None:
    if not _is_int(seed):
        raise JalError(f"`seed` {seed!r:.40} must be an integer")


@functools.cache
def _legacy_key_shape() -> tuple[int, ...]:
    return jax.eval_shape(jax.random.PRNGKey, 0).shape  # [2] under threefry; traced once, not per call


def check_key(key, name: str = "key") -> None:
    """Refuses anything but one PRNG key: a typed `jax.random.key` or a legacy uint32 `jax.random.PRNGKey`."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return
    elif dtype == np.uint32 and key.shape == _legacy_key_shape():
        return
    what = f"of dtype {dtype} and shape {list(key.shape)}" if dtype is not None else f"{key!r:.40}"
    raise JalError(f"`{name}` {what} is not one JAX key; pass jax.random.key(seed)")


def check_model(model) -> None:
    from jal.models import Model  # here, so that the acquisitions' checks do not load the models

    if not isinstance(model, Model):
        raise JalError(
            f"`model` {type(model).__name__} is not a jal Model; build one with jal.build_model or jal.FlaxModel"
        )


def checked_inputs(inputs, input_shape, name: str = "inputs", *, raw: bool = False, fix: str = ""):
    """`inputs` as an array [N, *input_shape] of normalised floats (of any numbers if `raw`: normalised later).

    Integers are refused rather than cast: they are raw values a model was not trained on.
    `fix` says how else to pass them.
    """
    if not hasattr(inputs, "dtype"):  # a list or tuple
        try:
            inputs = np.asarray(inputs)
        except ValueError as e:
            raise JalError(f"`{name}` cannot be read as an array ({e}); pass a numeric array") from e
    kinds = (jnp.floating, jnp.integer, jnp.bool_) if raw else (jnp.floating,)
    if not any(jnp.issubdtype(inputs.dtype, kind) for kind in kinds):
        what = "numbers" if raw else "normalised floats"
        raise JalError(f"`{name}` of {inputs.dtype}: pass {what}{fix or ' (normalise raw values first)'}")
    shape, dims = tuple(inputs.shape), ", ".join(str(d) for d in ("N", *input_shape))
    if not shape or shape[1:] != tuple(input_shape):
        raise JalError(f"`{name}` of shape {list(shape)}, but the model takes [{dims}]")
    return inputs


def check_finite(inputs, name: str = "inputs", *, offset: int = 0) -> None:
    """Refuses NaN and inf in float inputs [N, ...], naming the first such input (its index plus `offset`).

    One reduction, on the device for a device array; under a trace there are no values to check.
    """
    if isinstance(inputs, jax.core.Tracer) or not jnp.issubdtype(inputs.dtype, jnp.floating):
        return
    device = isinstance(inputs, jax.Array)
    if not (_all_finite(inputs) if device else np.isfinite(inputs).all()):
        finite = np.isfinite(np.asarray(inputs)).reshape(len(inputs), -1).all(axis=1)  # [N], only on failure
        index = offset + int(np.flatnonzero(~finite)[0])
        raise JalError(f"`{name}`: input {index} holds NaN or inf; remove or repair it")
