"""Every guard of the Python API: a bad argument gets a one-line JalError naming it, degenerate data a warning."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import loop
from jal.acquire import ACQUISITIONS, Acquisition, select
from jal.acquire.batchbald import batchbald, sampled_joint_log_probs
from jal.acquire.epig import epig, sample_targets
from jal.acquire.estimators import ESTIMATORS
from jal.acquire.sampling import choose, random_scores, top_k_unlabeled
from jal.data.dataset import checked_splits
from jal.errors import JalError
from jal.filtering import filter_curve, fit, kept_indices, score_all
from jal.learner import ActiveLearner
from jal.models import build_model
from jal.scoring import log_probs, mc_log_probs, score_pool
from jal.train import TrainConfig

MODEL = build_model("mlp", (4,), 3, hidden_sizes=(8,))
KEY = jax.random.key(0)
INPUTS = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
LABELS = np.arange(10) % 3
CONFIG = loop.LoopConfig(model=MODEL, mc_samples=4)


@pytest.fixture(scope="module")
def params():
    return MODEL.init(jax.random.key(1))


def refused(name: str):
    """pytest.raises for a JalError whose message names `name` in backquotes."""
    return pytest.raises(JalError, match=f"`{name}`")


def with_nan(inputs=INPUTS, index=3):
    broken = np.array(inputs)
    broken[index, 1] = np.nan
    return broken


def one_line(error) -> bool:
    return "\n" not in str(error.value)


# Keys: typed and legacy keys are taken; anything else is refused by name.

BAD_KEYS = [0, 1.5, np.zeros(2, np.float32), np.zeros(3, np.uint32), jax.random.split(KEY, 2), "key"]


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)], ids=["typed", "legacy"])
def test_typed_and_legacy_keys_are_taken(params, key):
    assert mc_log_probs(MODEL, params, INPUTS, key=key, mc_samples=2).shape == (10, 2, 3)


@pytest.mark.parametrize("key", BAD_KEYS, ids=["int", "float", "float array", "uint32[3]", "two keys", "str"])
def test_what_is_not_one_key_is_refused(params, key):
    with refused("key") as error:
        mc_log_probs(MODEL, params, INPUTS, key=key)
    assert "jax.random.key(seed)" in str(error.value) and one_line(error)


# Scoring.


@pytest.mark.parametrize(
    "name, value", [("mc_samples", 0), ("mc_samples", 2.5), ("chunk_size", -1), ("chunk_size", True)]
)
def test_mc_log_probs_refuses_sizes_that_are_not_positive_integers(params, name, value):
    with refused(name):
        mc_log_probs(MODEL, params, INPUTS, key=KEY, **{name: value})


BAD_INPUTS = [  # inputs, the message
    (np.array([["a", "b", "c", "d"]]), "of <U1: pass normalised floats"),
    (np.empty((2, 4), object), "of object: pass normalised floats"),
    (np.ones((10, 4), np.int64), "of int64: pass normalised floats"),
    (INPUTS[:, :3], "of shape [10, 3], but the model takes [N, 4]"),
    (INPUTS[0], "of shape [4], but the model takes [N, 4]"),
    (INPUTS[None], "of shape [1, 10, 4], but the model takes [N, 4]"),
    (with_nan(), "input 3 holds NaN or inf"),
    (np.where(np.arange(10)[:, None] == 7, np.inf, INPUTS), "input 7 holds NaN or inf"),
]


@pytest.mark.parametrize("inputs, message", BAD_INPUTS)
@pytest.mark.parametrize("scorer", ["mc_log_probs", "log_probs", "score_pool"])
def test_scoring_refuses_inputs_a_model_cannot_take(params, inputs, message, scorer):
    score = {
        "mc_log_probs": lambda x: mc_log_probs(MODEL, params, x, key=KEY),
        "log_probs": lambda x: log_probs(MODEL, params, x),
        "score_pool": lambda x: score_pool(MODEL, params, x, key=KEY),
    }[scorer]
    with refused("inputs") as error:
        score(inputs)
    assert message in str(error.value) and one_line(error)


def test_lists_of_numbers_are_inputs_and_traced_calls_check_only_shapes(params):
    np.testing.assert_allclose(log_probs(MODEL, params, INPUTS.tolist()), log_probs(MODEL, params, INPUTS))
    # Inside one's own jit the values are unknown: shapes are checked, NaN passes through.
    traced = jax.jit(lambda x: mc_log_probs(MODEL, params, x, key=KEY, mc_samples=2))
    assert np.isnan(np.asarray(traced(with_nan()))[3]).all()
    with refused("inputs"):
        traced(INPUTS[:, :3])


def test_score_pool_refuses_bad_sizes_and_names_a_nan_beyond_the_first_batch(params, tmp_path):
    with refused("batch_size"):
        score_pool(MODEL, params, INPUTS, key=KEY, batch_size=0)
    memmap = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float32, shape=(10, 4))
    memmap[:] = with_nan(index=9)
    with refused("inputs") as error:  # batches of 4: the NaN is in the third
        score_pool(MODEL, params, np.load(tmp_path / "pool.npy", mmap_mode="r"), key=KEY, batch_size=4, chunk_size=2)
    assert "input 9 holds NaN" in str(error.value)
    # Raw inputs go with their normalization, and integers are raw values then.
    from jal.data import identity

    raw = score_pool(MODEL, params, np.ones((3, 4), np.int64), key=KEY, normalization=identity(4))
    assert raw.shape == (3,)


# One MC sample: the scores of disagreement between samples are identically zero.

DISAGREEMENT = {"bald", "variation_ratio", "mean_std", "epig", "batchbald"}


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_the_registry_knows_which_scores_one_sample_makes_zero(name):
    entry = ACQUISITIONS[name]
    log_probs_k1 = jax.nn.log_softmax(jax.random.normal(jax.random.key(2), (20, 1, 3)))
    zero = np.allclose(entry.score(log_probs_k1, log_probs_k1), 0.0, atol=1e-6)
    # Random acquisition records BALD (zero here) but chooses without it: one sample is enough.
    assert zero == (name in DISAGREEMENT | {"random"})
    assert entry.min_mc_samples == (2 if name in DISAGREEMENT else 1)


@pytest.mark.parametrize("name", sorted(DISAGREEMENT))
def test_one_mc_sample_is_refused_for_disagreement_scores(name):
    with refused("mc_samples") as error:
        loop.check_config(CONFIG._replace(acquisition=name, mc_samples=1))
    assert f"too few for {name}" in str(error.value) and "use at least 2" in str(error.value) and one_line(error)
    loop.check_config(CONFIG._replace(acquisition=name, mc_samples=2))


@pytest.mark.parametrize("name", ["entropy", "least_confidence", "margin", "random"])
def test_one_mc_sample_is_enough_for_the_others(name):
    loop.check_config(CONFIG._replace(acquisition=name, mc_samples=1))


def test_one_mc_sample_is_refused_by_score_pool_and_filtering(params):
    for estimator in ("bald", "variation_ratio", "mean_std"):
        with refused("mc_samples"):
            score_pool(MODEL, params, INPUTS, key=KEY, estimator=estimator, mc_samples=1)
        with refused("mc_samples"):
            score_all(KEY, MODEL, params, INPUTS, estimator, mc_samples=1)
    assert score_pool(MODEL, params, INPUTS, key=KEY, estimator="entropy", mc_samples=1).shape == (10,)
    assert score_all(KEY, MODEL, params, INPUTS, "margin", mc_samples=1).shape == (10,)
    with pytest.raises(JalError, match="`mc_samples` 0 must be a whole number of at least 1"):  # not "too few"
        score_all(KEY, MODEL, params, INPUTS, "entropy", mc_samples=0)


@pytest.mark.slow
def test_analysis_refuses_one_mc_sample_before_any_sibling_trains(tmp_path, monkeypatch, capsys):
    from jal import analysis
    from jal.cli import main

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype(np.float32), np.arange(50) % 3
    np.savez(tmp_path / "data.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    data = ["--data", str(tmp_path / "data.npz")]
    small = ["--model", "mlp", "--hidden-sizes", "8", "--initial", "6", "--acquire", "2", "--iterations", "1",
             "--epochs", "1", "--min-samples-per-epoch", "16", "--mc-samples", "2", "--skip-test-scores"]  # fmt: skip
    assert main(["run", "--out", str(tmp_path / "run"), *data, *small]) == 0
    monkeypatch.setattr(analysis, "fit", lambda *args, **kwargs: pytest.fail("a sibling trained"))
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "run"), *data, "--mc-samples", "4", "1"]) == 2
    assert "--mc-samples 1 is too few for bald" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["acquire", "mc_samples", "chunk_size", "joint_samples", "epig_targets"])
@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_check_config_refuses_sizes_by_name(name, value):
    with refused(name):
        loop.check_config(CONFIG._replace(**{name: value}))


def test_check_config_refuses_training_settings_before_any_work():
    with pytest.raises(JalError, match="`batch_size` 10 must be a multiple of `groups` 3"):
        loop.check_config(CONFIG._replace(train=TrainConfig(batch_size=10, groups=3)))
    with refused("groups"):
        loop.check_config(CONFIG._replace(train=TrainConfig(groups=0)))
    with pytest.raises(JalError, match="multiple of `groups`"):  # the learner refuses it when built
        learner(config=CONFIG._replace(train=TrainConfig(batch_size=10, groups=3)))


# Acquisitions.


@pytest.mark.parametrize("name", [*ESTIMATORS, "batchbald"])
def test_every_score_and_batch_refuses_log_probs_without_the_k_axis(name):
    """[N, C] where [N, K, C] belongs (one forward pass, not K) is refused, not scored as N inputs of C samples."""
    one_pass = jax.nn.log_softmax(jax.random.normal(KEY, (5, 3)))
    score = ESTIMATORS.get(name) or (lambda lp: batchbald(lp, 2, key=KEY))
    with pytest.raises(AssertionError, match="rank"):
        score(one_pass)


def test_the_registry_names_each_acquisition_by_its_key():
    assert all(entry.name == name for name, entry in ACQUISITIONS.items())


def test_which_acquisitions_keep_the_pools_log_probabilities():
    """Only the choices that read [P, K, C] keep it; a streamed pool, which never holds it, takes the others."""
    from jal import streamed

    needs = {name: entry.needs_pool_log_probs for name, entry in ACQUISITIONS.items()}
    assert needs == {**dict.fromkeys(ESTIMATORS, False), "epig": True, "batchbald": True, "random": False}
    for name in ("bald", "random"):
        streamed.check_config(CONFIG._replace(acquisition=name))
    for name in ("batchbald", "epig"):
        with pytest.raises(JalError, match="a streamed pool does not keep"):
            streamed.check_config(CONFIG._replace(acquisition=name))


def test_acquisition_sizes_keys_and_settings():
    scores, labeled = jnp.linspace(0, 1, 6), jnp.zeros(6, bool)
    log_probs_ = jax.nn.log_softmax(jax.random.normal(KEY, (6, 4, 3)))
    own = Acquisition("own", ACQUISITIONS["bald"].score, select=lambda key, lp, s, labeled, k, config: jnp.arange(k))
    for acquisition in (ACQUISITIONS["bald"], own):
        with refused("k"):
            select(acquisition, KEY, log_probs_, scores, labeled, 0, CONFIG)
    with refused("k"):
        top_k_unlabeled(scores, labeled, 7)
    with refused("sampling"):
        choose(KEY, scores, labeled, 2, sampling="greedy")
    with refused("temperature"):
        choose(KEY, scores, labeled, 2, sampling="power", temperature=-1.0)
    with refused("key"):
        choose(0, scores, labeled, 2, sampling="softmax")
    choose(None, scores, labeled, 2)  # top-k draws nothing: it needs no key
    with refused("key"):
        random_scores(7, 6)
    with refused("pool_size"):
        random_scores(KEY, 0)
    with refused("num_targets"):
        sample_targets(KEY, 6, 0)
    with refused("chunk_size"):
        epig(log_probs_, log_probs_, chunk_size=0)
    with refused("batch_size"):
        batchbald(log_probs_, 0, key=KEY)
    with refused("joint_samples"):
        batchbald(log_probs_, 2, key=KEY, joint_samples=0)
    with refused("chunk_size"):
        batchbald(log_probs_, 2, key=KEY, chunk_size=0)
    with refused("key"):
        batchbald(log_probs_, 2, key=3)
    with refused("joint_samples"):
        sampled_joint_log_probs(KEY, log_probs_, 0)


# Filtering.


def test_kept_indices_refuses_fractions_scores_and_protected_samples_out_of_range():
    scores = np.linspace(0, 1, 8)
    for fraction in (1.0, -0.1, np.nan, 2):
        with refused("fraction"):
            kept_indices(scores, fraction)
    with refused("scores"):
        kept_indices(scores.reshape(2, 4), 0.5)
    with refused("scores"):
        kept_indices(np.array(["a", "b"]), 0.5)
    for protected in ([8], [-1], [0.5]):
        with refused("protected"):
            kept_indices(scores, 0.5, protected=protected)


TRAIN = TrainConfig(epochs=1, min_samples_per_epoch=16, batch_size=8)


def test_fit_refuses_what_it_cannot_train_on():
    with refused("kept"):
        fit(KEY, MODEL, INPUTS, LABELS, [], TRAIN)
    with refused("kept"):
        fit(KEY, MODEL, INPUTS, LABELS, [10], TRAIN)
    with refused("labels"):
        fit(KEY, MODEL, INPUTS, LABELS + 1, [0, 2], TRAIN)  # label 3 of 3 classes
    with refused("labels"):
        fit(KEY, MODEL, INPUTS, LABELS[:5], [0, 2], TRAIN)
    with refused("inputs"):
        fit(KEY, MODEL, with_nan(), LABELS, [0, 2], TRAIN)
    with refused("key"):
        fit(42, MODEL, INPUTS, LABELS, [0, 2], TRAIN)
    with refused("model"):
        fit(KEY, "mlp", INPUTS, LABELS, [0, 2], TRAIN)


def test_filter_curve_checks_every_setting_before_training(monkeypatch):
    from jal import filtering

    fits = []  # a model trained: some setting was checked only when it was used
    monkeypatch.setattr(filtering, "fit", lambda *args, **kwargs: fits.append(args))
    data = loop.Data(jnp.asarray(INPUTS), jnp.asarray(INPUTS), jnp.asarray(LABELS))
    run = dict(config=TRAIN, mc_samples=2)
    with refused("fractions"):
        filter_curve(KEY, MODEL, data, LABELS, np.linspace(0, 1, 10), fractions=(0.0, 0.5, 1.0), **run)
    with refused("scores"):
        filter_curve(KEY, MODEL, data, LABELS, np.linspace(0, 1, 9), fractions=(0.0,), **run)
    with refused("mc_samples"):
        filter_curve(KEY, MODEL, data, LABELS, np.linspace(0, 1, 10), **{**run, "mc_samples": 0})
    with refused("key"):
        filter_curve(7, MODEL, data, LABELS, np.linspace(0, 1, 10), **run)
    assert not fits


# The learner.


def learner(pool=INPUTS, **kwargs):
    arguments = dict(initial_indices=[0, 1, 2], initial_labels=[0, 1, 2], config=CONFIG) | kwargs
    return ActiveLearner(arguments.pop("model", MODEL), pool, **arguments)


BAD_LEARNERS = [  # the arguments, the argument named, the message
    (dict(model="mlp"), "model", "is not a jal Model"),
    (dict(seed=1.5), "seed", "must be an integer"),
    (dict(pool=with_nan(index=2)), "pool_inputs", "input 2 holds NaN or inf"),
    (dict(pool=INPUTS.astype(np.float64) * 1e39), "pool_inputs", "input 0 holds NaN or inf"),  # inf as float32
    (dict(pool=np.ones((10, 4), np.int64)), "pool_inputs", "of int64"),
    (dict(pool=[["a"] * 4] * 10), "pool_inputs", "of <U1"),
    (dict(pool=INPUTS[:, :2]), "pool_inputs", "the model takes [N, 4]"),
    (dict(test_inputs=INPUTS[:, :2], test_labels=LABELS), "test_inputs", "the model takes [N, 4]"),
    (dict(test_inputs=with_nan(), test_labels=LABELS), "test_inputs", "input 3 holds NaN"),
    (dict(test_inputs=INPUTS, test_labels=LABELS + 1), "test_labels", "10 classes in 0..2"),
    (dict(test_inputs=INPUTS, test_labels=LABELS[:4]), "test_labels", "one per test input"),
    (dict(test_inputs=INPUTS), "test_inputs", "together, or neither"),
    (dict(config=CONFIG._replace(mc_samples=1)), "mc_samples", "too few for bald"),
    (dict(config=CONFIG._replace(chunk_size=0)), "chunk_size", "at least 1"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e39 as float32
@pytest.mark.parametrize("arguments, name, message", BAD_LEARNERS)
def test_the_learner_refuses_bad_arguments_by_name(arguments, name, message):
    with refused(name) as error:
        learner(**arguments)
    assert message in str(error.value) and one_line(error)


def test_save_and_load_refuse_what_is_not_a_path(tmp_path):
    active = learner()
    with refused("path"):
        active.save(3)
    path = active.save(tmp_path / "learner.npz")
    with refused("path"):
        ActiveLearner.load(None, MODEL, INPUTS)
    with refused("model"):
        ActiveLearner.load(path, object(), INPUTS)
    with refused("pool_inputs"):
        ActiveLearner.load(path, MODEL, with_nan())
    assert ActiveLearner.load(path, MODEL, INPUTS).labeled.sum() == 3


# Degenerate data: a warning, on one line.


def splits(**changes):
    arrays = {"x_train": INPUTS, "y_train": LABELS, "x_test": INPUTS[:4], "y_test": LABELS[:4]} | changes
    return checked_splits(arrays, {key: f"data.npz, key {key}" for key in arrays}, None)


def test_the_class_count_names_the_split_whose_label_breaks_it_and_two_classes_are_enough():
    arrays = {"x_train": INPUTS, "y_train": LABELS, "x_test": INPUTS[:4], "y_test": np.array([0, 1, 2, 5])}
    where = {key: f"data.npz, key {key}" for key in arrays}
    with pytest.raises(JalError, match="key y_test: label 5 with 3 classes"):
        checked_splits(dict(arrays), where, 3)
    with pytest.raises(JalError, match="key y_train: label 4 with 3 classes"):
        checked_splits({**arrays, "y_train": LABELS + 2, "y_test": LABELS[:4]}, where, 3)
    assert splits(y_train=LABELS % 2, y_test=LABELS[:4] % 2)[1] == 2  # binary data is data


def test_two_training_labels_of_one_class_are_warned_of():
    x = INPUTS[:2]
    with pytest.warns(UserWarning, match="every training label is class 1"):
        splits(x_train=x, y_train=np.array([1, 1]), x_test=INPUTS[:4], y_test=np.array([0, 1, 2, 0]))


def test_usable_data_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits()
        learner()


def test_identical_inputs_and_one_training_class_are_warned_of():
    with pytest.warns(UserWarning, match="data.npz, key x_train: all 10 inputs are identical") as record:
        splits(x_train=np.ones((10, 4), np.float32))
    with pytest.warns(UserWarning, match="data.npz, key y_train: every training label is class 1") as more:
        _, num_classes = splits(y_train=np.ones(10, int))
    assert num_classes == 3  # the test labels hold the others
    with pytest.warns(UserWarning, match="`pool_inputs`: all 10 inputs are identical") as pool:
        learner(np.zeros((10, 4), np.float32))
    assert all("\n" not in str(w.message) for w in [*record, *more, *pool])
    # A warning points at the check that found it, as any warning of a library should.
    assert record[0].filename.endswith(os.path.join("jal", "data", "dataset.py"))
    assert pool[0].filename.endswith(os.path.join("jal", "learner.py"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner(
            np.zeros((1, 4), np.float32), initial_indices=[0], initial_labels=[0]
        )  # one input: nothing to tell apart
