"""Every option of `jal run`, `LoopConfig` and `TrainConfig` changes what it should, not merely runs.

Three layers, each cheap where it can be:

* the command line: each flag reaches the settings the loop is handed (a run stopped
  right after its setup: the data loaded, the model built, the initial labels drawn);
* the library: each `LoopConfig` and `TrainConfig` field changes the loop's proposal,
  the trained parameters, the scores or the choice the way it says (tiny models, small data);
* whole runs: the settings the run itself reads (rounds, seeds, the pool, the initial
  labels, stopping rules, the score history's dtype, filtering) change its directory.

Each test compares against the same computation without the option, so that an option
that were silently ignored would fail it.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jal.filtering
import jal.models.convs
import jal.models.lenet5
import jal.native
from jal import experiment, loop, store
from jal.acquire import ACQUISITIONS, select
from jal.acquire.batchbald import batchbald
from jal.acquire.estimators import accuracy_and_nll
from jal.cli import main
from jal.config import DataConfig
from jal.data import make_pool
from jal.models import build_model
from jal.models.base import Model
from jal.models.lenet5 import LeNet5
from jal.models.mlp import MLPModel
from jal.scoring import log_probs, mc_log_probs
from jal.streamed import HostData
from jal.train import TrainConfig, epoch_size, train

POOL, INITIAL, TRAIN_SIZE = 120, 10, 1400  # the digits fixture: 1,400 training inputs, 397 test inputs


# The command line: a flag reaches what the loop is handed.


class _SetUp(Exception):
    """Raised right after `experiment.setup`: the run's settings are resolved, nothing is trained yet."""


def base_flags(digits, *flags: str) -> list[str]:
    start = [] if "--initial-per-class" in flags else ["--initial", str(INITIAL)]
    return ["--data", str(digits), "--model", "mlp", "--hidden-sizes", "8", "--pool-size", str(POOL), *start,
            "--acquire", "2", "--iterations", "1", "--mc-samples", "4", "--epochs", "1",
            "--min-samples-per-epoch", "128", "--batch-size", "16", "--lr", "0.01", "--chunk-size", "32", "--quiet",
            *flags]  # fmt: skip


def set_up(monkeypatch, out, flags: list[str]) -> tuple:
    """(RunConfig, experiment.Setup) of `jal run` with `flags`, stopped before its first round."""
    seen = {}
    real_setup = experiment.setup

    def stop_after_setup(config, mesh=None):
        seen["config"], seen["setup"] = config, real_setup(config, mesh)
        raise _SetUp

    with monkeypatch.context() as patch:
        patch.setattr(experiment, "setup", stop_after_setup)
        with pytest.raises(_SetUp):
            main(["run", "--out", str(out), *flags])
    assert not out.exists()  # a run stopped before its first round leaves nothing
    return seen["config"], seen["setup"]


def _initial(setup) -> list[int]:
    return np.flatnonzero(np.asarray(setup.state.labeled)).tolist()


# flags -> (what to read of the run's config and setup, the value the flags must give it).
LOOP_FLAGS = {
    "acquisition batchbald": (["--acquisition", "batchbald"],
                              lambda c, s: (s.loop_config.acquisition_entry.name, s.loop_config.consistent_masks),
                              ("batchbald", True)),
    "acquisition powerbald": (["--acquisition", "powerbald"],
                              lambda c, s: (s.loop_config.acquisition_entry.name, s.loop_config.sampling),
                              ("bald", "power")),
    "acquire": (["--acquire", "3"], lambda c, s: s.loop_config.acquire, 3),
    "mc-samples": (["--mc-samples", "7"], lambda c, s: s.loop_config.mc_samples, 7),
    "chunk-size": (["--chunk-size", "7"], lambda c, s: (s.loop_config.scoring_chunk_size, s.facts["chunk_size"]),
                   (7, 7)),
    "sampling": (["--sampling", "softmax"], lambda c, s: s.loop_config.sampling, "softmax"),
    "temperature": (["--temperature", "0.25"], lambda c, s: s.loop_config.temperature, 0.25),
    "consistent-masks": (["--consistent-masks"], lambda c, s: (s.loop_config.consistent_masks,
                                                                 s.facts["consistent_masks"]), (True, True)),
    "joint-samples": (["--joint-samples", "99"], lambda c, s: s.loop_config.joint_samples, 99),
    "epig-targets": (["--epig-targets", "17"], lambda c, s: s.loop_config.epig_targets, 17),
    "skip-test-scores": (["--skip-test-scores"], lambda c, s: s.loop_config.score_test, False),
    "lr": (["--lr", "0.02"], lambda c, s: s.loop_config.train.learning_rate, 0.02),
    "weight-decay": (["--weight-decay", "0.5"], lambda c, s: s.loop_config.train.weight_decay, 0.5),
    "batch-size": (["--batch-size", "32"], lambda c, s: s.loop_config.train.batch_size, 32),
    "epochs": (["--epochs", "2"], lambda c, s: s.loop_config.train.epochs, 2),
    "min-samples-per-epoch": (["--min-samples-per-epoch", "96"],
                              lambda c, s: s.loop_config.train.min_samples_per_epoch, 96),
    "gradient-groups": (["--gradient-groups", "2"], lambda c, s: s.loop_config.train.groups, 2),
    "hidden-sizes": (["--hidden-sizes", "12", "6"], lambda c, s: s.loop_config.model.hidden_sizes, (12, 6)),
    "dropout-rate": (["--dropout-rate", "0.25"], lambda c, s: s.loop_config.model.dropout_rate, 0.25),
    "num-classes": (["--num-classes", "12"], lambda c, s: s.loop_config.model.num_classes, 12),
    "no-normalize": (["--no-normalize"], lambda c, s: float(jnp.max(s.data.pool_inputs)), 16.0),
    "stream": (["--stream"], lambda c, s: isinstance(s.data, HostData), True),
    "initial": (["--initial", "12"], lambda c, s: int(s.state.num_labeled), 12),
    "pool-size": (["--pool-size", "90"], lambda c, s: (len(s.indices), int(s.state.labels.shape[0])), (90, 90)),
    "pool-seed": (["--pool-seed", "5"], lambda c, s: s.indices.tolist(), make_pool(TRAIN_SIZE, POOL, seed=5).tolist()),
    "seed": (["--seed", "7"], lambda c, s: _initial(s), sorted(loop.initial_indices(POOL, INITIAL, 7).tolist())),
    "iterations": (["--iterations", "5"], lambda c, s: c.iterations, 5),
    "history-dtype": (["--history-dtype", "float16"], lambda c, s: c.history_dtype, "float16"),
    "target-accuracy": (["--target-accuracy", "0.5"], lambda c, s: c.stop.target_accuracy, 0.5),
    "max-labels": (["--max-labels", "11"], lambda c, s: c.stop.max_labels, 11),
    "plateau": (["--plateau", "3", "--plateau-delta", "0.01"], lambda c, s: (c.stop.plateau, c.stop.plateau_delta),
                (3, 0.01)),
}  # fmt: skip


@pytest.fixture(scope="module")
def unflagged(digits, tmp_path_factory):
    """(RunConfig, Setup) of the small run without any further flag."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return set_up(monkeypatch, tmp_path_factory.mktemp("unflagged") / "run", base_flags(digits))


@pytest.mark.parametrize("name", LOOP_FLAGS)
def test_each_flag_reaches_the_settings_the_loop_is_handed(name, digits, unflagged, tmp_path, monkeypatch):
    flags, read, expected = LOOP_FLAGS[name]
    config, setup = set_up(monkeypatch, tmp_path / "run", base_flags(digits, *flags))
    assert read(config, setup) == expected, name
    assert read(*unflagged) != expected, name  # ... and the flag changed it: without it, another value


@pytest.mark.parametrize(
    "flags, resolved",
    [
        ([], {"conv": "native" if jal.native.available() else "im2col",
              "scorer": "factorised" if jal.native.available() else "factorised_xla"}),
        (["--scorer", "vmapped"], {"scorer": "vmapped"}),
        (["--scorer", "factorised_xla"], {"scorer": "factorised_xla"}),
        (["--conv", "xla"], {"conv": "xla"}),
        (["--conv", "im2col"], {"conv": "im2col"}),
    ],
)  # fmt: skip
def test_lenet_scorer_and_conv_flags_reach_the_model_and_the_record(flags, resolved, synthetic_dir, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    base = ["--data-dir", str(synthetic_dir), "--pool-size", "50", "--initial", "10", "--acquire", "2",
            "--iterations", "1", "--quiet"]  # fmt: skip
    _, setup = set_up(monkeypatch, tmp_path / "run", [*base, *flags])
    model = setup.loop_config.model
    assert isinstance(model, LeNet5)
    for setting, value in resolved.items():
        assert setup.facts["model"][setting] == value  # config.json's record of what ran
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    assert model.scorer == given.get("--scorer", "factorised") and model.conv == given.get("--conv", "auto")


# The library: LeNet-5's scorers and convolutions are exact alternatives, each its own path.


@pytest.fixture(scope="module")
def lenet_case():
    shapes = jax.eval_shape(LeNet5().init, jax.random.key(0))  # random weights of LeNet's shapes: no compiling
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32), shapes)
    images = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    return params, images


@pytest.mark.slow
def test_each_lenet_scorer_takes_its_own_path_to_the_same_numbers(lenet_case, monkeypatch):
    params, images = lenet_case
    keys = jax.random.split(jax.random.key(2), len(images))
    calls = []
    real = jal.models.lenet5.factorised_log_probs

    def factorised(*args, native=True, **kwargs):
        calls.append(native)
        return real(*args, native=native, **kwargs)

    monkeypatch.setattr(jal.models.lenet5, "factorised_log_probs", factorised)
    results, paths = {}, {}
    for scorer in jal.models.lenet5.SCORERS:
        calls.clear()
        results[scorer] = LeNet5(scorer=scorer).mc_log_probs(params, images, keys, 3)
        paths[scorer] = list(calls)
    # factorised: the native kernel; factorised_xla: the same factorisation in XLA ops; vmapped: neither.
    assert paths == {"factorised": [True], "factorised_xla": [False], "vmapped": []}
    for scorer in ("factorised_xla", "vmapped"):
        np.testing.assert_allclose(results[scorer], results["factorised"], rtol=1e-4, atol=1e-5, err_msg=scorer)
    assert not np.allclose(results["vmapped"][:, 0], results["vmapped"][:, 1])  # the K samples differ


@pytest.mark.slow
def test_each_lenet_conv_takes_its_own_path_to_the_same_training(lenet_case, monkeypatch):
    params, images = lenet_case
    labels = jnp.arange(len(images)) % 10
    key = jax.random.key(3)
    counts = {}

    def counting(name, real):
        def spy(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return real(*args, **kwargs)

        return spy

    results = {}
    convs = ("im2col", "xla", *(("native",) if jal.native.available() else ()))
    for conv in convs:
        model = LeNet5(conv=conv)

        def loss(p, model=model):
            logits = model.logits(p, images, key)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(images)), labels])

        with monkeypatch.context() as patch:
            patch.setattr(jal.models.convs, "im2col_conv", counting("im2col", jal.models.convs.im2col_conv))
            patch.setattr(jax.lax, "conv_general_dilated", counting("xla", jax.lax.conv_general_dilated))
            patch.setattr(jal.native, "masked_conv2", counting("native", jal.native.masked_conv2))
            counts.clear()
            results[conv] = jax.jit(jax.value_and_grad(loss))(params)  # traced afresh: the spies see the path
            used = {name for name, count in counts.items() if count}
        assert used == {conv}, (conv, counts)
    for conv in convs[1:]:
        np.testing.assert_allclose(results[conv][0], results["im2col"][0], rtol=1e-5, err_msg=conv)
        for got, want in zip(jax.tree.leaves(results[conv][1]), jax.tree.leaves(results["im2col"][1]), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=conv)


# The library: training. A linear model with dropout on its inputs, initialised without
# randomness, so that a run that never updates its parameters ends where it began.


@dataclasses.dataclass(frozen=True)
class DroppedLinear(Model):
    def init(self, key):
        size = math.prod(self.input_shape) * self.num_classes
        weights = (jnp.arange(size, dtype=jnp.float32) - size / 2).reshape(-1, self.num_classes) / 16  # exact
        return {"w": weights, "b": jnp.zeros(self.num_classes)}

    def forward(self, params, x, noise):
        x = x.reshape(x.shape[0], -1)
        if noise is not None:
            x = x * jax.random.bernoulli(noise, 0.5, x.shape) * 2.0
        return x @ params["w"] + params["b"]

    def logits(self, params, x, key):
        return self.forward(params, x, key)

    def sample_noise(self, key, mc_samples):
        return jax.random.split(key, mc_samples)


LINEAR = DroppedLinear((3,), 4)
STEPS = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-4, weight_decay=0.0, min_samples_per_epoch=64)


def fit(config: TrainConfig, inputs, labels, num_labeled: int = 20, seed: int = 0):
    inputs, labels = jnp.asarray(inputs, jnp.float32), jnp.asarray(labels, jnp.int32)
    order = jnp.arange(len(labels), dtype=jnp.int32)
    return train(jax.random.key(seed), LINEAR, inputs, labels, order, jnp.int32(num_labeled), config=config,
                 samples_per_epoch=epoch_size(num_labeled, config))  # fmt: skip


def zeros_case():
    """Inputs of zeros, all of class 0: the gradient of the bias is the same at every step."""
    return np.zeros((50, 3)), np.zeros(50, int)


def random_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(50, 3)), rng.integers(0, 4, 50)


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes, steps",
    [
        ({}, 4),  # 64 samples an epoch in batches of 16
        ({"batch_size": 64}, 1),
        ({"batch_size": 48}, 2),  # the last batch partial
        ({"epochs": 3}, 12),
        ({"min_samples_per_epoch": 128}, 8),
        ({"min_samples_per_epoch": 10, "learning_rate": 2e-4}, 2),  # 20 labels: an epoch is the 20
    ],
)
def test_batch_size_epochs_samples_per_epoch_and_lr_set_the_steps_taken(changes, steps):
    # With a constant gradient, Adam moves a parameter by exactly `learning_rate` a step,
    # so the bias of class 0 counts the optimiser's steps.
    config = STEPS._replace(**changes)
    params, losses = fit(config, *zeros_case())
    assert losses.shape == (config.epochs,)  # one mean loss per epoch
    taken = float(params["b"][0]) / config.learning_rate
    assert abs(taken - steps) < 0.05, f"{taken:.3f} steps of {config}, expected {steps}"


@pytest.mark.slow
def test_learning_rate_zero_leaves_the_initial_parameters_and_any_other_moves_them():
    inputs, labels = random_case()
    initial = LINEAR.init(jax.random.key(0))
    still, _ = fit(STEPS._replace(learning_rate=0.0, weight_decay=1e-4), inputs, labels)
    moved, _ = fit(STEPS, inputs, labels)  # 4 steps of 1e-4
    for name in ("w", "b"):
        np.testing.assert_array_equal(still[name], initial[name], err_msg=name)
        assert np.abs(np.asarray(moved[name]) - np.asarray(initial[name])).min() > 1e-5, name


@pytest.mark.slow
def test_weight_decay_shrinks_the_parameters_trained_on_the_same_data():
    inputs, labels = random_case()
    config = STEPS._replace(learning_rate=1e-2, epochs=3)
    plain, _ = fit(config, inputs, labels)
    decayed, _ = fit(config._replace(weight_decay=1.0), inputs, labels)
    norm_plain, norm_decayed = (float(jnp.linalg.norm(p["w"])) for p in (plain, decayed))
    initial = float(jnp.linalg.norm(LINEAR.init(jax.random.key(0))["w"]))
    assert norm_decayed < 0.85 * min(norm_plain, initial), (norm_decayed, norm_plain, initial)


@pytest.mark.slow
def test_gradient_groups_change_the_dropout_draws_but_not_the_learning():
    grouped = STEPS._replace(groups=4)
    # Without randomness in training, the groups' summed gradients are the batch's: the same steps.
    whole, whole_losses = fit(STEPS, *zeros_case())
    split, split_losses = fit(grouped, *zeros_case())
    np.testing.assert_allclose(split["b"], whole["b"], rtol=1e-5)
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5)
    # With dropout, each group draws its own masks: another model, trained as far.
    inputs, labels = random_case()
    whole, _ = fit(STEPS, inputs, labels)
    split, _ = fit(grouped, inputs, labels)
    assert not np.allclose(split["w"], whole["w"], rtol=1e-3, atol=1e-6)
    initial = LINEAR.init(jax.random.key(0))["w"]
    moved = [float(jnp.abs(p["w"] - initial).sum()) for p in (whole, split)]
    assert 0.5 < moved[1] / moved[0] < 2, moved


# The library: acquisition from MC log-probabilities.


def duplicate_pool():
    """Four networks (K = 4), two classes. A splits the networks {0,1} | {2,3}, B splits them
    {0,2} | {1,3} and is a little less certain; the pool holds A three times, B once and two
    inputs every network finds a coin toss. A's label says nothing about B's, nor does a second
    copy of A add anything once the first is labeled."""
    a = [[1, 0], [1, 0], [0, 1], [0, 1]]
    b = [[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]]
    flat = [[0.5, 0.5]] * 4
    pool = np.array([flat, a, a, b, a, flat], np.float32)
    return jnp.log(jnp.asarray(pool)), jnp.log(jnp.asarray(np.array([b, b], np.float32)))


def acquire(name: str, log_probs, k: int, targets=None, **settings):
    entry = ACQUISITIONS[name]
    scores = entry.score(log_probs, targets)
    labeled = jnp.zeros(log_probs.shape[0], bool)
    config = loop.LoopConfig(acquisition=name, acquire=k, **settings)
    return np.asarray(select(entry, jax.random.key(0), log_probs, scores, labeled, k, config)).tolist(), scores


@pytest.mark.slow
def test_batchbald_and_epig_do_not_take_the_near_duplicates_top_k_bald_takes():
    log_probs, targets = duplicate_pool()
    bald_choice, bald_scores = acquire("bald", log_probs, 2)
    assert bald_choice == [1, 2]  # A twice: the top two BALD scores
    batch_choice, _ = acquire("batchbald", log_probs, 2)
    assert batch_choice == [1, 3]  # A once, then B, which a second A would not inform
    epig_choice, epig_scores = acquire("epig", log_probs, 2, targets=targets)
    # EPIG values what informs the targets' predictions (B-like inputs): B first, never A.
    assert epig_choice[0] == 3 and not {1, 2, 4} & set(epig_choice)
    assert float(epig_scores[1]) < 1e-6 < float(epig_scores[3]) and float(bald_scores[1]) > float(bald_scores[3])


def joint_mutual_information(probs: np.ndarray) -> float:
    """I(y_1..n; w) of probabilities [n, K, C] by enumerating every configuration, in float64."""
    joint = np.ones((1, probs.shape[1]))
    for p in probs:
        joint = (joint[:, None, :] * p.T[None]).reshape(-1, probs.shape[1])
    mean = joint.mean(axis=1)
    return -np.sum(mean * np.log(mean)) + np.sum(probs * np.log(probs)) / probs.shape[1]


def random_log_probs(seed, n, k, c):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 1, c)) * 2.0 + rng.normal(size=(n, k, c)) * 1.5
    return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))


@pytest.mark.slow
def test_joint_samples_set_batchbalds_exact_and_sampled_steps():
    log_probs = random_log_probs(4, 40, 6, 3)
    exact = 3**3  # every step of a batch of 4 enumerates its 3^n configurations
    few = 6  # 2 exact steps (1 and 3 configurations), then 6 sampled configurations a step
    indices, scores = {}, {}
    for budget in (exact, few):
        indices[budget], scores[budget] = batchbald(
            log_probs, 4, key=jax.random.key(0), joint_samples=budget, excluded=jnp.zeros(40, bool)
        )
    batch = np.exp(np.asarray(log_probs, np.float64)[np.asarray(indices[exact])])
    expected = [joint_mutual_information(batch[:n]) for n in range(1, 5)]
    np.testing.assert_allclose(scores[exact], expected, rtol=1e-4)  # exact: the batch's joint MI
    np.testing.assert_array_equal(indices[few][:2], indices[exact][:2])  # the exact steps agree
    np.testing.assert_allclose(scores[few][:2], scores[exact][:2], rtol=1e-5)
    assert np.abs(np.asarray(scores[few][2:]) - np.asarray(scores[exact][2:])).min() > 1e-3  # sampled: estimates
    # The loop's setting reaches BatchBALD's selection.
    chosen = {budget: acquire("batchbald", log_probs, 4, joint_samples=budget)[0] for budget in (exact, few)}
    assert chosen[exact] == np.asarray(indices[exact]).tolist() and chosen[few] == np.asarray(indices[few]).tolist()
    assert set(chosen[few]) != set(chosen[exact])


SAMPLING_SCORES = jnp.array([0.8, 0.2, 2.0, 1.4, 0.6, 1.0, 0.4, 1.8, 1.2, 1.6])  # the highest at 2
DRAWS = 4000


def stated_probabilities(sampling: str, temperature: float) -> np.ndarray:
    """The module docstring's p_i, in float64: s^(1/T), exp(s/T) or rank^(-1/T), normalised."""
    scores = np.asarray(SAMPLING_SCORES, np.float64)
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    log_weights = {"power": np.log(scores), "softmax": scores, "softrank": -np.log(ranks)}[sampling] / temperature
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["power", "softmax", "softrank"])
def test_stochastic_sampling_follows_its_temperature(sampling):
    labeled = jnp.zeros(len(SAMPLING_SCORES), bool)
    entry = ACQUISITIONS["bald"]
    frequencies = {}
    for temperature in (1e-3, 1.0, 1e4):
        config = loop.LoopConfig(acquire=1, sampling=sampling, temperature=temperature)
        draw = jax.jit(jax.vmap(lambda key, c=config: select(entry, key, None, SAMPLING_SCORES, labeled, 1, c)[0]))
        picks = np.asarray(draw(jax.random.split(jax.random.key(0), DRAWS)))
        frequencies[temperature] = np.bincount(picks, minlength=len(SAMPLING_SCORES)) / DRAWS
        p = stated_probabilities(sampling, temperature)
        # Each frequency within 5 binomial standard deviations of its probability.
        tolerance = 5 * np.sqrt(p * (1 - p) / DRAWS) + 1 / DRAWS
        off = np.abs(frequencies[temperature] - p) > tolerance
        assert not off.any(), f"T={temperature}: drawn {frequencies[temperature][off]}, stated {p[off].round(4)}"
    uniform_tolerance = 5 * np.sqrt(0.1 * 0.9 / DRAWS)
    assert frequencies[1e-3][2] == 1.0  # near greedy: always the highest score
    assert np.abs(frequencies[1e4] - 0.1).max() < uniform_tolerance  # near uniform
    # At T = 1 the draw is neither: the hotter, the flatter.
    assert 1.0 - 0.05 > frequencies[1.0][2] > 0.1 + 0.05


@pytest.mark.slow
def test_consistent_masks_are_shared_by_identical_inputs_and_independent_ones_are_not():
    model = build_model("mlp", (6,), 3, hidden_sizes=(8,))
    params = model.init(jax.random.key(0))
    inputs = jnp.repeat(jax.random.normal(jax.random.key(1), (1, 6)), 6, axis=0)  # one input six times
    settings = dict(key=jax.random.key(2), mc_samples=5, chunk_size=4)
    shared = np.asarray(mc_log_probs(model, params, inputs, consistent=True, **settings))
    own = np.asarray(mc_log_probs(model, params, inputs, **settings))
    for i in range(1, 6):  # the same K networks for every input: identical rows
        np.testing.assert_allclose(shared[i], shared[0], rtol=1e-6, atol=1e-7)
        assert np.abs(own[i] - own[0]).max() > 1e-3  # each input its own K draws
    assert np.abs(shared[0, 1:] - shared[0, :1]).max() > 1e-3  # and the K networks differ from one another


# The library: the loop. An MLP on a pool of 120 digits, one round proposed per setting.


@dataclasses.dataclass(frozen=True)
class ChunkWatchingMLP(MLPModel):
    """The shipped MLP, noting the chunk size each scoring traces (the same numbers)."""

    def mc_log_probs(self, params, x, keys, mc_samples):
        SCORED_CHUNKS.append(x.shape[0])
        return super().mc_log_probs(params, x, keys, mc_samples)


SCORED_CHUNKS: list[int] = []
ROUND = loop.LoopConfig(acquire=2, mc_samples=4, chunk_size=32, train=TrainConfig(epochs=1, min_samples_per_epoch=128))


@pytest.fixture(scope="module")
def proposals(digits):
    """proposal(config, copies=False, seed=0) -> (state, indices, info), each computed once.

    `copies`: a pool of one input 120 times over, whose scores differ only by their MC draws.
    """
    pool = experiment.load_pool(DataConfig(path=str(digits), pool_size=POOL))
    model = build_model("mlp", pool.dataset.input_shape, pool.dataset.num_classes, hidden_sizes=(8,))
    done = {}

    def proposal(config=ROUND, *, copies=False, seed=0):
        config = config if isinstance(config.model, MLPModel) else config._replace(model=model)
        if (config, copies, seed) not in done:
            data, labels = pool.data, pool.labels
            if copies:
                data = data._replace(pool_inputs=jnp.repeat(data.pool_inputs[:1], POOL, axis=0))
                labels = np.repeat(labels[:1], POOL)
            initial = loop.initial_indices(POOL, INITIAL, seed)
            state = loop.init(jax.random.key(seed), POOL, initial, labels[initial])
            done[config, copies, seed] = (state, *loop.propose(state, data, config))
        return done[config, copies, seed]

    proposal.test_inputs, proposal.test_labels, proposal.model = pool.data.test_inputs, pool.data.test_labels, model
    return proposal


def top_unlabeled(state, info, k: int) -> set[int]:
    scores = np.where(np.asarray(state.labeled), -np.inf, np.asarray(info.pool_scores))
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


GREEDY = ROUND._replace(acquire=10, sampling="power", temperature=1e-6)
FLAT = GREEDY._replace(temperature=1e4)


@pytest.mark.slow
def test_acquire_is_the_number_chosen(proposals):
    for config in (ROUND, GREEDY):
        state, indices, info = proposals(config)
        assert len(indices) == config.acquire == len(set(np.asarray(indices).tolist()))
        assert not np.asarray(state.labeled)[np.asarray(indices)].any()
    state, indices, info = proposals()
    assert set(np.asarray(indices).tolist()) == top_unlabeled(state, info, ROUND.acquire)  # top-k: the highest


@pytest.mark.slow
def test_the_loops_sampling_and_temperature_decide_how_greedy_the_choice_is(proposals):
    state, _, scored = proposals()
    _, cold, cold_info = proposals(GREEDY)
    _, hot, hot_info = proposals(FLAT)
    for info in (cold_info, hot_info):  # the same model and scores: only the choice differs
        np.testing.assert_array_equal(info.pool_scores, scored.pool_scores)
    best = top_unlabeled(state, scored, 10)
    assert set(np.asarray(cold).tolist()) == best
    # Uniform over the 110 unlabeled: about 0.9 of the best 10 expected, 6 or more has odds below 1e-4.
    assert len(set(np.asarray(hot).tolist()) & best) <= 5
    assert not np.asarray(state.labeled)[np.asarray(hot)].any()


@pytest.mark.slow
def test_mc_samples_shrink_the_noise_of_the_scores_and_consistent_masks_remove_it(proposals):
    # One input 120 times over: with independent masks each copy's score is its own K-sample estimate.
    _, _, few = proposals(copies=True)
    _, _, many = proposals(ROUND._replace(mc_samples=64), copies=True)
    _, _, shared = proposals(ROUND._replace(consistent=True), copies=True)
    spread = {name: float(np.std(np.asarray(info.pool_scores))) for name, info in
              (("K=4", few), ("K=64", many), ("consistent", shared))}  # fmt: skip
    assert spread["K=4"] > 1e-3 and spread["K=64"] < 0.5 * spread["K=4"], spread  # about 1/4 expected
    np.testing.assert_allclose(shared.pool_scores, shared.pool_scores[0], rtol=1e-5, atol=1e-7)
    assert spread["consistent"] < 1e-3 * spread["K=4"], spread


@pytest.mark.slow
def test_chunk_size_changes_the_chunks_and_not_the_scores(proposals):
    _, _, whole = proposals()
    SCORED_CHUNKS.clear()
    model = ChunkWatchingMLP(proposals.model.input_shape, proposals.model.num_classes, hidden_sizes=(8,))
    _, _, chunked = proposals(ROUND._replace(model=model, chunk_size=7))
    assert SCORED_CHUNKS and set(SCORED_CHUNKS) == {7}, SCORED_CHUNKS
    # Each input's dropout draws are keyed by its position, not by its chunk.
    np.testing.assert_allclose(chunked.pool_scores, whole.pool_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.test_scores, whole.test_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_without_test_scores_accuracy_comes_from_one_deterministic_pass(proposals):
    _, _, scored = proposals()
    _, _, unscored = proposals(ROUND._replace(score_test=False))
    assert scored.test_scores.shape == proposals.test_labels.shape and unscored.test_scores.shape == (0,)
    deterministic = log_probs(proposals.model, unscored.params, proposals.test_inputs)
    accuracy, nll = accuracy_and_nll(deterministic, proposals.test_labels)
    np.testing.assert_allclose([unscored.test_accuracy, unscored.test_nll], [accuracy, nll], rtol=1e-5)
    assert float(unscored.test_nll) != pytest.approx(float(scored.test_nll), rel=1e-4)  # the MC mean differs
    np.testing.assert_array_equal(unscored.pool_scores, scored.pool_scores)  # the pool is scored alike


@pytest.mark.slow
def test_epig_scores_depend_on_how_many_targets_are_drawn(proposals):
    _, _, bald_round = proposals()
    _, _, one = proposals(ROUND._replace(acquisition="epig", epig_targets=1))
    _, _, many = proposals(ROUND._replace(acquisition="epig", epig_targets=60))
    for info in (one, many):
        assert np.isfinite(info.pool_scores).all() and (np.asarray(info.pool_scores) >= 0).all()
        assert not np.allclose(info.pool_scores, bald_round.pool_scores, rtol=1e-3)  # EPIG, not BALD
    assert np.abs(np.asarray(one.pool_scores) - np.asarray(many.pool_scores)).max() > 1e-3 * float(
        np.max(many.pool_scores)
    )


# Whole runs: what the run itself reads.


@pytest.fixture(scope="module")
def cli_run(digits, tmp_path_factory):
    """cli_run(*flags) -> the run directory of `jal run` with the small settings and `flags`, run once."""
    done = {}

    def run(*flags: str, again: bool = False):
        if flags not in done or again:
            out = tmp_path_factory.mktemp("run") / "run"
            assert main(["run", "--out", str(out), *base_flags(digits, *flags)]) == 0
            if again:
                return out
            done[flags] = out
        return done[flags]

    return run


def lines(run_dir) -> list[dict]:
    return store.read_metrics(run_dir)


@pytest.mark.slow
def test_iterations_set_the_rounds(cli_run):
    assert [m["num_labeled"] for m in lines(cli_run())] == [10, 12]
    longer = cli_run("--iterations", "3")
    assert [m["num_labeled"] for m in lines(longer)] == [10, 12, 14, 16]
    assert [len(m["acquired"]) for m in lines(longer)] == [2, 2, 2, 0]
    assert np.load(longer / store.POOL_SCORES).shape == (4, POOL)
    record = store.read_config(longer)["record"]  # what the settings resolved to, as the setup found it
    assert record["model"] == {"hidden_sizes": [8], "dropout_rate": 0.5} and record["chunk_size"] == 32
    assert record["consistent_masks"] is False and record["filtered_pool_size"] == POOL


@pytest.mark.slow
def test_seed_sets_the_initial_labels_and_the_models(cli_run):
    first, second = cli_run("--seed", "1"), cli_run("--seed", "2")
    repeat = cli_run("--seed", "1", again=True)
    assert (first / store.MODELS).read_bytes() == (repeat / store.MODELS).read_bytes()  # a seed is a run
    records = [store.read_config(run)["record"] for run in (first, second)]
    assert records[0]["initial_indices"] != records[1]["initial_indices"]
    assert not np.allclose(np.load(first / store.MODELS)[0], np.load(second / store.MODELS)[0])


@pytest.mark.slow
def test_pool_seed_draws_another_pool(cli_run):
    pools = {seed: np.load(cli_run("--pool-seed", str(seed)) / store.POOL_INDICES) for seed in (1, 2)}
    for seed, pool in pools.items():
        np.testing.assert_array_equal(pool, make_pool(TRAIN_SIZE, POOL, seed=seed))
    assert len(set(pools[1].tolist()) & set(pools[2].tolist())) < POOL // 2


@pytest.mark.slow
def test_initial_per_class_labels_every_class_equally(cli_run, digits):
    run = cli_run("--initial-per-class", "2")
    y_train = np.load(digits)["y_train"]
    pool = np.load(run / store.POOL_INDICES)
    initial = store.read_config(run)["record"]["initial_indices"]
    assert np.bincount(y_train[pool[initial]], minlength=10).tolist() == [2] * 10
    assert lines(run)[0]["num_labeled"] == 20
    drawn = store.read_config(cli_run())["record"]["initial_indices"]  # --initial 10: drawn at random
    assert np.bincount(y_train[np.load(cli_run() / store.POOL_INDICES)[drawn]], minlength=10).tolist() != [1] * 10


@pytest.mark.slow
def test_history_dtype_float16_writes_the_same_scores_at_half_the_size(cli_run):
    full, half = cli_run(), cli_run("--history-dtype", "float16")
    scores32, scores16 = np.load(full / store.POOL_SCORES), np.load(half / store.POOL_SCORES)
    assert scores32.dtype == np.float32 and scores16.dtype == np.float16
    np.testing.assert_allclose(scores16, scores32, rtol=2e-3, atol=1e-6)
    assert np.load(half / store.TEST_SCORES).dtype == np.float32  # only the pool's history


@pytest.mark.slow
def test_stopping_rules_end_the_run_where_they_say(cli_run):
    whole = lines(cli_run("--iterations", "4"))
    accuracies = [m["test_accuracy"] for m in whole]
    assert len(whole) == 5

    def plateau_stop(rounds: int, delta: float) -> int:
        """The rounds a run with --plateau rounds --plateau-delta delta keeps, from the whole run's accuracies."""
        for n in range(rounds + 1, len(accuracies)):
            if max(accuracies[n - rounds : n]) <= max(accuracies[: n - rounds]) + delta:
                return n
        return len(accuracies)

    # A plateau of the fewest rounds in which some round beat round 0, by `rise`: with a
    # delta above the rise the run stops right there, with one below it goes on.
    rounds, rise = next(((n, max(accuracies[1 : n + 1]) - accuracies[0]) for n in range(1, 4)
                         if max(accuracies[1 : n + 1]) > accuracies[0]), (None, None))  # fmt: skip
    assert rounds is not None, f"no round beat round 0 ({accuracies}): choose settings under which the model learns"
    best = accuracies.index(max(accuracies))
    cases = {
        ("--target-accuracy", "0.01"): 1,  # any model reaches 1%
        ("--target-accuracy", repr(max(accuracies))): best + 1,
        ("--max-labels", "13"): 3,  # 10, 12, 14 labels
        ("--plateau", str(rounds), "--plateau-delta", repr(2 * rise)): rounds + 1,
        ("--plateau", str(rounds), "--plateau-delta", repr(rise / 2)): plateau_stop(rounds, rise / 2),
    }
    assert plateau_stop(rounds, rise / 2) > rounds + 1 and best > 0
    for rule, kept in cases.items():
        run = cli_run("--iterations", "4", *rule)
        assert len(lines(run)) == kept, (rule, accuracies)
        assert [m["acquired"] for m in lines(run)] == [m["acquired"] for m in whole[:kept]]  # the same run, cut
        status = store.read_status(run)
        assert status["state"] == "finished" and (kept < 5) == bool(status.get("stopped")), (rule, status)


@pytest.mark.slow
def test_filter_fraction_removes_the_lowest_scores_and_keeps_the_initial_labels(digits, tmp_path, monkeypatch):
    scored = {}
    real_score_all = experiment.score_all

    def score_all(*args, **kwargs):
        scored["estimator"] = args[4]
        scored["scores"] = real_score_all(*args, **kwargs)
        return scored["scores"]

    monkeypatch.setattr(experiment, "score_all", score_all)
    _, whole = set_up(monkeypatch, tmp_path / "whole", base_flags(digits))
    assert not scored  # nothing filtered, nothing scored
    flags = base_flags(digits, "--filter-fraction", "0.5", "--filter-estimator", "entropy")
    config, filtered = set_up(monkeypatch, tmp_path / "run", flags)
    assert config.filter_fraction == 0.5 and scored["estimator"] == "entropy"
    scores = scored["scores"]
    initial = loop.initial_indices(POOL, INITIAL, config.seed)
    candidates = np.setdiff1d(np.arange(POOL), initial)
    kept = np.flatnonzero(np.isin(whole.indices, filtered.indices))  # positions in the whole pool
    np.testing.assert_array_equal(whole.indices[kept], filtered.indices)
    assert set(initial) <= set(kept)  # the initial labels stay, whatever they score
    assert scores[initial].min() < np.median(scores[candidates])  # ... and some would have gone
    removed = np.setdiff1d(candidates, kept)
    assert len(removed) == round(0.5 * len(candidates)) and filtered.facts["filtered_pool_size"] == len(kept)
    assert scores[np.setdiff1d(kept, initial)].min() >= scores[removed].max()  # the highest-scoring half stays
    # The initial labels are the same samples in the kept pool.
    relabeled = filtered.indices[_initial(filtered)]
    assert sorted(relabeled.tolist()) == sorted(whole.indices[initial].tolist())


@pytest.mark.slow
def test_jal_filter_trains_on_the_highest_scores_against_a_random_removal(digits, tmp_path, monkeypatch):
    trained_on = []
    real_fit = jal.filtering.fit

    def fit_recording(key, model, inputs, labels, kept, config):
        trained_on.append(np.asarray(kept))
        return real_fit(key, model, inputs, labels, kept, config)

    monkeypatch.setattr(jal.filtering, "fit", fit_recording)
    out = tmp_path / "filter"
    flags = ["--data", str(digits), "--model", "mlp", "--hidden-sizes", "8", "--pool-size", str(POOL), "--initial",
             str(INITIAL), "--fractions", "0.5", "--mc-samples", "4", "--epochs", "1", "--min-samples-per-epoch", "128",
             "--batch-size", "16", "--lr", "0.01", "--quiet"]  # fmt: skip
    assert main(["filter", "--out", str(out), *flags]) == 0
    scores = np.load(out / store.FILTER_SCORES)
    pool = np.load(out / store.POOL_INDICES)
    protected = np.flatnonzero(np.isin(pool, store.read_config(out)["record"]["scoring_set"]))
    assert len(protected) == INITIAL
    evaluations = [json.loads(line) for line in (out / store.FILTERING).read_text().splitlines()]
    assert [(e["fraction"], e["removal"]) for e in evaluations] == [(0.5, "lowest"), (0.5, "random")]
    lowest, random_ = trained_on
    candidates = np.setdiff1d(np.arange(POOL), protected)
    for kept in (lowest, random_):
        assert set(protected) <= set(kept.tolist()) and len(kept) == POOL - round(0.5 * len(candidates))
    removed = np.setdiff1d(candidates, lowest)
    assert scores[np.setdiff1d(lowest, protected)].min() >= scores[removed].max()
    assert scores[np.setdiff1d(random_, protected)].min() < scores[removed].max()  # random removal is not it
    assert [e["num_kept"] for e in evaluations] == [len(lowest), len(random_)]
