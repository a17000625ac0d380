"""Dropout masks tested as random bits: the keep rate, and independence across units, inputs and MC samples.

The masks are drawn through the paths scoring uses (`jal.scoring.mc_log_probs`: input i's
draws from fold_in(key, position i), K draws per input, or one shared set of K draws when
consistent), and read back from the log-probabilities of models that output their masks.

Every statistic is compared with its distribution under independent Bernoulli(p) bits:

* the keep rate: |mean - p| <= Z * sqrt(p (1 - p) / n);
* pairwise correlation at lag 1 along each axis (and at the word sizes along units),
  pooled over all such pairs: |r| <= Z / sqrt(n), as sqrt(n) r is about N(0, 1);
* the correlation of every pair of units, of inputs and of MC samples: |r| <= z_family /
  sqrt(n), z_family the Bonferroni bound for all the pairs at a family error of 1e-6;
* a chi-square of the 8 patterns of 3 neighbouring bits (non-overlapping triples, so the
  triples are independent and the statistic is chi-square with 7 degrees of freedom): it
  also sees dependence between three bits that is invisible to every pairwise correlation.

Z = 5 and the chi-square bound are set at a two-sided normal tail of 5.7e-7 per statistic;
a random mask set fails one of a check's statistics (at most 20) with probability below 2e-5.
The checker is shown to have power on deliberately correlated generators.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2, norm

import jal.models.lenet5 as lenet5
from jal.models import FlaxModel
from jal.models.dropout import Dropout, keep_mask
from jal.models.lenet5 import CONV1_FEATURES, CONV2_FEATURES, FC1_FEATURES, MASK_UNITS, LeNet5
from jal.models.mlp import MLPModel
from jal.scoring import mc_log_probs

Z = 5.0
TAIL = 2 * norm.sf(Z)  # 5.7e-7: the probability that one statistic flags independent bits
FAMILY_ALPHA = 1e-6  # for the maximum over all pairs of an axis
AXES = ("inputs", "samples", "units")

N, K, CHUNK = 64, 32, 16  # inputs, MC samples; several chunks, so positions cross chunk boundaries


# The checker.


def _standardised(bits: np.ndarray, p: float) -> np.ndarray:
    return (bits.astype(np.float64) - p) / np.sqrt(p * (1 - p))


def lag_correlation(bits: np.ndarray, p: float, axis: int, lag: int) -> tuple[float, int]:
    """Correlation of bits `lag` apart along `axis`, pooled over every such pair, and the number of pairs."""
    x = np.moveaxis(_standardised(bits, p), axis, 0)
    products = x[lag:] * x[:-lag]
    return float(products.mean()), products.size


def max_pair_correlation(bits: np.ndarray, p: float, axis: int) -> tuple[float, float]:
    """The largest |correlation| between two slices along `axis` (over all pairs), and its bound."""
    x = np.moveaxis(_standardised(bits, p), axis, 0).reshape(bits.shape[axis], -1)
    n = x.shape[1]
    correlations = x @ x.T / n
    pairs = x.shape[0] * (x.shape[0] - 1) // 2
    bound = norm.isf(FAMILY_ALPHA / (2 * pairs)) / np.sqrt(n)
    return float(np.abs(correlations[np.triu_indices(x.shape[0], 1)]).max()), bound


def triple_chi_square(bits: np.ndarray, p: float, axis: int) -> float:
    """Pearson's chi-square of the 8 patterns of non-overlapping triples of neighbours along `axis` (7 dof)."""
    x = np.moveaxis(bits.astype(np.int64), axis, 0)
    triples = x[: 3 * (x.shape[0] // 3)].reshape(-1, 3, *x.shape[1:])
    codes = (triples[:, 0] * 4 + triples[:, 1] * 2 + triples[:, 2]).ravel()
    counts = np.bincount(codes, minlength=8)
    ones = np.array([bin(code).count("1") for code in range(8)])
    expected = codes.size * p**ones * (1 - p) ** (3 - ones)
    return float(((counts - expected) ** 2 / expected).sum())


def independence_failures(bits: np.ndarray, p: float, unit_lags=(1,)) -> list[str]:
    """What looks dependent or off-rate in keep bits [inputs, samples, units] of keep probability p; [] if nothing."""
    assert bits.ndim == 3 and bits.dtype == bool
    failures = []
    se = np.sqrt(p * (1 - p) / bits.size)
    if abs(bits.mean() - p) > Z * se:
        failures.append(f"keep rate {bits.mean():.5f}, expected {p:.5f} +- {Z * se:.5f}")
    chi_bound = chi2.isf(TAIL, 7)
    for axis, name in enumerate(AXES):
        for lag in unit_lags if name == "units" else (1,):
            if lag >= bits.shape[axis]:
                continue
            r, n = lag_correlation(bits, p, axis, lag)
            if abs(r) > Z / np.sqrt(n):
                failures.append(f"{name} {lag} apart: correlation {r:.4f}, bound {Z / np.sqrt(n):.4f}")
        if bits.shape[axis] >= 2:
            r, bound = max_pair_correlation(bits, p, axis)
            if r > bound:
                failures.append(f"some pair of {name}: |correlation| {r:.4f}, bound {bound:.4f}")
        if bits.shape[axis] >= 3:
            statistic = triple_chi_square(bits, p, axis)
            if statistic > chi_bound:
                failures.append(f"triples of {name}: chi-square {statistic:.1f}, bound {chi_bound:.1f}")
    return failures


def assert_independent(bits: np.ndarray, p: float, unit_lags=(1,)) -> None:
    failures = independence_failures(bits, p, unit_lags)
    assert not failures, "; ".join(failures)


# The checker's power: a good generator passes, correlated ones are flagged.


def iid_bits(seed: int, p: float = 0.5, shape=(N, K, 128)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < p


def test_independent_bits_pass_the_checker():
    for seed, p in enumerate((0.5, 0.75, 0.9)):
        assert_independent(iid_bits(seed, p), p, unit_lags=(1, 16, 32))


def _adjacent_inputs_share_a_key(bits):
    bits[1::2] = bits[::2]  # inputs 2j and 2j + 1 drawn from one key
    return bits


def _inputs_a_chunk_apart_share_a_key(bits):
    bits[CHUNK:] = bits[:-CHUNK]  # positions counted within the chunk: input i and i + 16 repeat
    return bits


def _samples_share_one_mask(bits):
    bits[:, 1:] = bits[:, :1]  # one key for every MC sample
    return bits


def _units_repeat_in_pairs(bits):
    bits[:, :, 1::2] = bits[:, :, ::2]  # each random bit used for two units
    return bits


def _one_in_ten_inputs_copies_its_neighbour(bits):
    copy = np.random.default_rng(99).random(bits.shape[0]) < 0.1
    for i in np.flatnonzero(copy[1:]) + 1:
        bits[i] = bits[i - 1]
    return bits


def _words_repeat(bits):
    bits[:, :, 32:64] = bits[:, :, :32]  # the second 32-bit word a copy of the first
    return bits


@pytest.mark.parametrize(
    "corrupt, flagged",
    [
        (_adjacent_inputs_share_a_key, "inputs 1 apart"),
        (_inputs_a_chunk_apart_share_a_key, "some pair of inputs"),
        (_samples_share_one_mask, "samples 1 apart"),
        (_units_repeat_in_pairs, "units 1 apart"),
        (_one_in_ten_inputs_copies_its_neighbour, "inputs 1 apart"),
        (_words_repeat, "some pair of units"),
    ],
)
def test_correlated_generators_are_flagged(corrupt, flagged):
    failures = independence_failures(corrupt(iid_bits(1)), 0.5)
    assert any(f.startswith(flagged) for f in failures), failures


def test_a_wrong_rate_is_flagged():
    failures = independence_failures(iid_bits(2, 0.51), 0.5)  # 262,144 bits: the keep rate 8 standard errors off
    assert failures and failures[0].startswith("keep rate"), failures


def test_dependence_between_three_bits_is_flagged_by_the_patterns_alone():
    # Pairwise independent fair bits whose every third unit is the XOR of the two before it.
    bits = iid_bits(3)
    bits[:, :, 2::3] = bits[:, :, 0:-2:3] ^ bits[:, :, 1:-1:3]
    failures = independence_failures(bits, 0.5)
    assert [f.split(":")[0] for f in failures] == ["triples of units"], failures


def _keys_by_position(key, position_of_input):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(position_of_input(jnp.arange(N)))


def _drawn(input_keys, draws_per_input=K, units=128):
    """Keep bits [N, draws, units] drawn by `keep_mask` (rate 1/2) from each input's key."""
    return np.asarray(jax.vmap(lambda key: keep_mask(key, (draws_per_input, units), 0.5)[0])(input_keys))


GENERATORS = {  # name: (keep bits [N, K, 128] from a key, what the checker says first, or None)
    "a key per position": (lambda key: _drawn(_keys_by_position(key, lambda i: i)), None),
    "adjacent inputs share a key": (lambda key: _drawn(_keys_by_position(key, lambda i: i // 2)), "inputs 1 apart"),
    "positions modulo the chunk": (lambda key: _drawn(_keys_by_position(key, lambda i: i % CHUNK)), "some pair"),
    "one mask for every MC sample": (
        lambda key: np.repeat(_drawn(_keys_by_position(key, lambda i: i), draws_per_input=1), K, axis=1),
        "samples 1 apart",
    ),
    "each bit used by two units": (
        lambda key: np.repeat(_drawn(_keys_by_position(key, lambda i: i), units=64), 2, axis=2),
        "units 1 apart",
    ),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_from_keys(name):
    generate, flagged = GENERATORS[name]
    failures = independence_failures(generate(jax.random.key(5)), 0.5)
    if flagged is None:
        assert not failures, failures
    else:
        assert any(f.startswith(flagged) for f in failures), failures


# Masks read back from the scoring path.


def _units_from_log_probs(log_probs: jax.Array) -> np.ndarray:
    """Keep bits [N, K, U] of a model whose logits are its dropout outputs (0 if dropped) and a last 0."""
    lp = np.asarray(log_probs, np.float64)
    return lp[..., :-1] - lp[..., -1:] > 0.5  # survivors are 1 / keep probability >= 1


def _zeros(shape) -> jax.Array:
    return jnp.zeros((N, *shape), jnp.float32)


class _MaskingLeNet(LeNet5):
    """LeNet5 whose factorised scorer is replaced (`_lenet_masks`) by one that returns its masks."""


def _lenet_masks(monkeypatch, key, *, consistent=False, scorer="factorised_xla") -> np.ndarray:
    """LeNet's masks [N, K, 224] (conv1, conv2, fc1) as `jal.scoring.mc_log_probs` draws them."""
    if scorer == "vmapped":
        model = _RevealingLeNet(scorer="vmapped")
        log_probs = mc_log_probs(model, {}, _zeros(model.input_shape), key=key, mc_samples=K, chunk_size=CHUNK,
                                 consistent=consistent)  # fmt: skip
        return _units_from_log_probs(log_probs)

    def reveal(params, images, masks, native=True):
        return jnp.concatenate(masks, axis=-1)  # [B, K, 224] in {0, 2}

    monkeypatch.setattr(lenet5, "factorised_log_probs", reveal)
    model = _MaskingLeNet(scorer=scorer)  # its own class: no compiled scorer of a real LeNet is reused
    values = np.asarray(mc_log_probs(model, {}, _zeros(model.input_shape), key=key, mc_samples=K,
                                     chunk_size=CHUNK, consistent=consistent))  # fmt: skip
    assert set(np.unique(values)) <= {0.0, 2.0}  # rate 1/2: survivors scaled by 2
    return values > 1


@dataclasses.dataclass(frozen=True)
class _RevealingLeNet(LeNet5):
    """LeNet5 whose forward under masks returns the masks (and a 0), for the vmapped scorer's draws."""

    def forward(self, params, x, noise):
        masks = jnp.concatenate(noise, axis=-1)  # [1, 224]
        return jnp.concatenate([masks, jnp.zeros((masks.shape[0], 1))], axis=-1)


@pytest.mark.parametrize("scorer", ["factorised_xla", "vmapped"])
def test_lenet_masks_are_independent_fair_bits(monkeypatch, scorer):
    bits = _lenet_masks(monkeypatch, jax.random.key(10), scorer=scorer)
    assert bits.shape == (N, K, MASK_UNITS) == (N, K, CONV1_FEATURES + CONV2_FEATURES + FC1_FEATURES)
    # Lags 32 and 64 compare bits of different 32-bit words, and the conv1, conv2 and fc1 masks.
    assert_independent(bits, 0.5, unit_lags=(1, 2, 31, 32, 33, 64, 96))


def test_lenet_scorers_draw_the_same_masks(monkeypatch):
    key = jax.random.key(11)
    factorised = _lenet_masks(monkeypatch, key)
    np.testing.assert_array_equal(factorised, _lenet_masks(monkeypatch, key, scorer="vmapped"))
    consistent = _lenet_masks(monkeypatch, key, consistent=True)
    np.testing.assert_array_equal(consistent, _lenet_masks(monkeypatch, key, consistent=True, scorer="vmapped"))


def test_lenet_consistent_masks_are_shared_by_inputs_and_independent_across_samples(monkeypatch):
    key = jax.random.key(12)
    consistent = _lenet_masks(monkeypatch, key, consistent=True)
    assert (consistent == consistent[:1]).all()  # the same K networks for every input
    assert_independent(consistent[:1], 0.5, unit_lags=(1, 32))  # [1, K, 224]: samples, units
    independent = _lenet_masks(monkeypatch, key)
    assert not (independent == independent[:1]).all(axis=(1, 2))[1:].any()  # no input repeats input 0's masks
    assert (consistent[0] != independent[0]).any()  # the shared draws are not input 0's own


def _mlp_masks(rate: float, *, consistent=False, key=None) -> np.ndarray:
    """The shipped MLP's last dropout mask [N, K, U], read through scoring: identity weights after a mask of ones."""
    units = 64
    model = MLPModel(input_shape=(1,), num_classes=units + 1, hidden_sizes=(units,), dropout_rate=rate)
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
    params["Dense_0"]["bias"] = jnp.ones(units)  # hidden layer: all ones, then the mask
    params["Dense_1"]["kernel"] = jnp.eye(units, units + 1)  # logits: the masked ones, and a 0
    key = jax.random.key(20) if key is None else key
    log_probs = mc_log_probs(model, params, _zeros((1,)), key=key, mc_samples=K, chunk_size=CHUNK,
                             consistent=consistent)  # fmt: skip
    return _units_from_log_probs(log_probs)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.5, 0.25])  # 1 and 2 bits per unit: 32 and 16 units per random word
def test_mlp_masks_are_independent_at_the_rate(rate):
    bits = _mlp_masks(rate)
    assert_independent(bits, 1 - rate, unit_lags=(1, 2, 16, 32))


@pytest.mark.slow
def test_mlp_consistent_masks_are_shared_by_inputs():
    consistent = _mlp_masks(0.5, consistent=True)
    assert (consistent == consistent[:1]).all()
    assert_independent(consistent[:1], 0.5, unit_lags=(1, 32))
    independent = _mlp_masks(0.5)
    assert not (independent == independent[:1]).all(axis=(1, 2))[1:].any()


class _TwoDropouts(nn.Module):
    """Two `Dropout` layers of `units` ones side by side, then a 0: logits that are the two masks."""

    units: int
    rate: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        ones = jnp.ones((x.shape[0], self.units))
        first = Dropout(self.rate)(ones, deterministic=not train)
        second = Dropout(self.rate)(ones, deterministic=not train)
        return jnp.concatenate([first, second, jnp.zeros((x.shape[0], 1))], axis=-1)


@pytest.mark.slow
def test_flax_model_layers_draw_independent_masks_at_a_16_bit_rate():
    rate, units = 0.1, 48  # 16 bits per unit: 2 units per random word
    model = FlaxModel(input_shape=(1,), num_classes=2 * units + 1, module=_TwoDropouts(units, rate))
    log_probs = mc_log_probs(model, {}, _zeros((1,)), key=jax.random.key(30), mc_samples=K, chunk_size=CHUNK)
    bits = _units_from_log_probs(log_probs)  # [N, K, 96]: the first layer's units, then the second's
    _, keep_probability = keep_mask(jax.random.key(0), (1,), rate)
    # Lag 48 pairs each unit of the first layer with the same unit of the second.
    assert_independent(bits, keep_probability, unit_lags=(1, 2, units))
