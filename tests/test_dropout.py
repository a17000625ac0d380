import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal.models.dropout import Dropout, bits_per_unit, keep_mask, unit_values


def test_the_fewest_bits_that_represent_the_rate():
    assert [bits_per_unit(r) for r in (0.5, 0.25, 0.75, 0.125, 0.1, 0.3)] == [1, 2, 2, 4, 16, 16]


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1, 0.9])
def test_masks_keep_each_unit_at_the_rate_independently(rate):
    keep, keep_probability = keep_mask(jax.random.key(0), (2000, 100), rate)
    assert abs(keep_probability - (1 - rate)) <= 2**-17  # 16 bits: the rate rounded to 1/65536
    keep = np.asarray(keep, np.float64)
    se = np.sqrt(keep_probability * (1 - keep_probability) / keep.size)
    assert abs(keep.mean() - keep_probability) < 5 * se
    # Units, and the inputs of a batch, are not correlated with one another.
    centred = keep - keep.mean()
    for a, b in ((centred[:, :-1], centred[:, 1:]), (centred[:-1], centred[1:]), (centred[:, :-32], centred[:, 32:])):
        correlation = (a * b).mean() / centred.var()
        assert abs(correlation) < 5 / np.sqrt(a.size), correlation


def test_unit_values_are_uniform_over_their_bits():
    values = np.asarray(unit_values(jax.random.key(1), (50_000,), 2))
    counts = np.bincount(values, minlength=4)
    assert counts.sum() == 50_000 and (np.abs(counts - 12_500) < 5 * np.sqrt(12_500)).all()


def test_dropout_is_a_drop_in_for_flax_dropout():
    x = jnp.ones((4000, 8))
    out = Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 4 / 3])  # survivors scaled by 1 / (1 - rate)
    assert abs(float(out.mean()) - 1.0) < 0.02  # the expected output is the input
    assert (Dropout(0.25).apply({}, x, deterministic=True) == x).all()
    assert (Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)}) == 0).all()
    # broadcast_dims: one mask per row of a [N, H, W] input, as nn.Dropout's Dropout2d-like use.
    images = jnp.ones((50, 6, 6, 3))
    out = Dropout(0.5, broadcast_dims=(1, 2)).apply(
        {}, images, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    assert (out == out[:, :1, :1, :]).all() and not (out == out[:1]).all()
    # The same RNG stream as nn.Dropout: another key, another mask.
    a = Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
    b = Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(5)})
    assert not (a == b).all()
    assert isinstance(Dropout(0.5), nn.Module)
