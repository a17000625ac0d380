import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normalize, synthetic_mnist

from jal import loop
from jal.acquire import ACQUISITIONS, Acquisition
from jal.acquire.estimators import bald
from jal.errors import JalError
from jal.models import build_model
from jal.train import TrainConfig

POOL, INITIAL, ACQUIRE = 120, 10, 3
CONFIG = loop.LoopConfig(
    acquire=ACQUIRE, mc_samples=4, chunk_size=64, train=TrainConfig(epochs=1, min_samples_per_epoch=64)
)


@pytest.fixture(scope="module")
def problem():
    train_images, train_labels, test_images, test_labels = synthetic_mnist(POOL, 50, seed=1)
    data = loop.Data(
        jnp.asarray(normalize(train_images)), jnp.asarray(normalize(test_images)), jnp.asarray(test_labels, jnp.int32)
    )
    return data, loop.dataset_oracle(train_labels)


def fresh_state(oracle, seed=0):
    initial = loop.initial_indices(POOL, INITIAL, seed)
    return loop.init(jax.random.key(seed), POOL, initial, oracle(initial))


def run_steps(problem, config, steps, seed=0):
    data, oracle = problem
    state, infos = fresh_state(oracle, seed), []
    for _ in range(steps):
        before = state
        state, info = loop.step(state, data, config, oracle)
        infos.append((before, info))
    return state, infos


@pytest.mark.slow
def test_loop_invariants(problem):
    state, infos = run_steps(problem, CONFIG, 4)
    for before, info in infos:
        labeled = np.asarray(before.labeled)
        scores = np.asarray(info.pool_scores)
        acquired = np.asarray(info.acquired)
        assert scores.shape == (POOL,) and np.isfinite(scores).all()
        assert np.asarray(info.test_scores).shape == (50,)
        assert 0 <= float(info.test_accuracy) <= 1 and np.isfinite(float(info.test_nll))
        # Each acquisition is the best-scoring set among the unlabeled samples, best first.
        assert not labeled[acquired].any() and len(set(acquired.tolist())) == ACQUIRE
        best = np.sort(scores[~labeled])[::-1][:ACQUIRE]
        np.testing.assert_allclose(scores[acquired], best)
        np.testing.assert_allclose(np.asarray(info.acquired_scores), best)
    # Labeled and unlabeled partition the pool; order lists each labeled sample once.
    labeled = np.asarray(state.labeled)
    order = np.asarray(state.order)
    n = int(state.num_labeled)
    assert n == INITIAL + 4 * ACQUIRE == labeled.sum() and int(state.iteration) == 4
    assert sorted(order[:n].tolist()) == np.flatnonzero(labeled).tolist() and (order[n:] == loop.UNLABELED).all()
    acquired_in_order = np.concatenate([np.asarray(info.acquired) for _, info in infos])
    np.testing.assert_array_equal(order[INITIAL:n], acquired_in_order)
    # The oracle's labels land on the labeled samples only.
    np.testing.assert_array_equal(np.asarray(state.labels)[labeled], problem[1](np.flatnonzero(labeled)))
    assert (np.asarray(state.labels)[~labeled] == loop.UNLABELED).all()


@pytest.mark.slow
def test_no_recompilation_as_the_labeled_set_grows(problem):
    data, oracle = problem
    config = CONFIG._replace(mc_samples=3)  # a configuration no other test compiles
    state, _ = loop.step(fresh_state(oracle), data, config, oracle)
    compiled = loop._propose._cache_size()
    for _ in range(3):
        state, _ = loop.step(state, data, config, oracle)
    loop.evaluate(state, data, config)
    assert loop._propose._cache_size() == compiled


def test_same_seed_same_acquisitions(problem):
    _, first = run_steps(problem, CONFIG, 3, seed=5)
    _, second = run_steps(problem, CONFIG, 3, seed=5)
    for (_, a), (_, b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.acquired, b.acquired)
        np.testing.assert_array_equal(a.pool_scores, b.pool_scores)
    _, other = run_steps(problem, CONFIG, 1, seed=6)
    assert not np.array_equal(other[0][1].pool_scores, first[0][1].pool_scores)


@pytest.mark.slow
def test_random_acquisition_records_bald_and_skipping_test_scores(problem):
    config = CONFIG._replace(acquisition="random", score_test=False)
    state, infos = run_steps(problem, config, 2)
    (before, info), _ = infos
    assert np.asarray(info.test_scores).shape == (0,)
    assert not np.asarray(before.labeled)[np.asarray(info.acquired)].any()
    # Random choices are not the top BALD scores (with overwhelming probability for 3 of 110).
    top = np.argsort(-np.asarray(info.pool_scores) - 1e9 * np.asarray(before.labeled))[:ACQUIRE]
    assert set(top.tolist()) != set(np.asarray(info.acquired).tolist())


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        dict(acquisition="batchbald", joint_samples=100),  # exact for 2 steps, then sampled
        dict(acquisition="epig", epig_targets=7),
        dict(acquisition="bald", sampling="power", temperature=1.0),
        dict(acquisition="entropy", sampling="softrank", temperature=0.5, consistent=True),
    ],
)
def test_batch_aware_and_stochastic_acquisitions_in_the_loop(problem, changes):
    data, oracle = problem
    config = CONFIG._replace(**changes)
    before = fresh_state(oracle)
    state, info = loop.step(before, data, config, oracle)
    labeled, acquired = np.asarray(before.labeled), np.asarray(info.acquired)
    assert not labeled[acquired].any() and len(set(acquired.tolist())) == ACQUIRE
    scores = np.asarray(info.pool_scores)
    assert scores.shape == (POOL,) and np.isfinite(scores).all() and (scores >= 0).all()
    assert np.asarray(info.test_scores).shape == (50,)
    compiled = loop._propose._cache_size()
    state, _ = loop.step(state, data, config, oracle)
    assert loop._propose._cache_size() == compiled  # nothing recompiles as the labeled set grows
    assert int(state.num_labeled) == INITIAL + 2 * ACQUIRE == np.asarray(state.labeled).sum()


def test_settings_that_contradict_each_other_are_errors():
    for changes, message in [
        (dict(acquisition="batchbald", sampling="power"), "does not apply"),
        (dict(acquisition="random", sampling="softmax"), "does not apply"),
        (dict(sampling="greedy"), "unknown sampling"),
        (dict(temperature=-1.0), "must be >= 0"),
        (dict(joint_samples=0), "at least 1"),
    ]:
        with pytest.raises(JalError, match=message):
            loop.check_config(CONFIG._replace(**changes))


def test_a_person_can_label_between_steps(problem):
    data, oracle = problem
    state = fresh_state(oracle)
    indices, info = loop.propose(state, data, CONFIG)
    # propose is pure: asking again gives the same answer and leaves the state as it was.
    again, _ = loop.propose(state, data, CONFIG)
    np.testing.assert_array_equal(indices, again)
    state = loop.label(state, indices, [7, 7, 7])
    assert (np.asarray(state.labels)[np.asarray(indices)] == 7).all()
    with pytest.raises(JalError, match="already labeled"):
        loop.label(state, indices[:1], [1])
    unlabeled = int(np.flatnonzero(~np.asarray(state.labeled))[0])
    with pytest.raises(JalError, match="0..9"):
        loop.label(state, [unlabeled], [10], num_classes=10)
    with pytest.raises(JalError, match="integer classes"):
        loop.label(state, [unlabeled], [1.5])
    for bad in ([-1], [POOL]):
        with pytest.raises(JalError, match="must lie in"):
            loop.label(state, bad, [1])
    with pytest.raises(JalError, match="repeated"):
        loop.init(jax.random.key(0), POOL, [3, 3], [1, 1])
    final = loop.evaluate(state, data, CONFIG)
    assert np.asarray(final.acquired).shape == (0,) and int(final.num_labeled) == INITIAL + ACQUIRE


def test_diverged_training_is_an_error(problem):
    _, ((_, info),) = run_steps(problem, CONFIG, 1)
    loop.check_trained(info)
    with pytest.raises(JalError, match="diverged"):
        loop.check_trained(info._replace(train_loss=info.train_loss.at[-1].set(jnp.nan)))


def test_run_calls_back_every_round_and_checks_settings(problem):
    data, oracle = problem
    seen = []
    state = loop.run(fresh_state(oracle), data, CONFIG, oracle, iterations=2, callback=seen.append)
    assert [int(i.iteration) for i in seen] == [0, 1, 2] and int(state.num_labeled) == INITIAL + 2 * ACQUIRE
    with pytest.raises(JalError, match="exceed the pool"):
        loop.check_settings(POOL, INITIAL, ACQUIRE, 100)
    with pytest.raises(JalError, match="pool is empty"):
        loop.check_settings(0, 1, 1, 1)
    with pytest.raises(JalError, match="unknown acquisition"):
        loop.check_config(loop.LoopConfig(acquisition="magic"))


@pytest.mark.slow
def test_an_acquisition_defined_here_alone_works_from_the_loop(problem):
    data, oracle = problem
    calls = []

    def lowest_bald(log_probs, targets):  # the opposite of BALD: the least informative first
        calls.append(log_probs.shape)
        return -bald(log_probs)

    config = CONFIG._replace(acquisition=Acquisition("lowest_bald", lowest_bald))
    assert "lowest_bald" not in ACQUISITIONS
    before = fresh_state(oracle)
    _, info = loop.step(before, data, config, oracle)
    labeled, scores = np.asarray(before.labeled), np.asarray(info.pool_scores)
    assert calls[:2] == [(POOL, 4, 10), (50, 4, 10)]  # the pool's and the test set's log-probabilities
    np.testing.assert_allclose(scores[np.asarray(info.acquired)], np.sort(scores[~labeled])[::-1][:ACQUIRE])
    assert (scores <= 0).all() and config.score_name == "lowest_bald"

    # Its own selection, modAL's query_strategy: here the lowest unlabeled indices.
    def first_unlabeled(key, log_probs, scores, labeled, k, config):
        return jnp.argsort(labeled, stable=True)[:k]

    config = CONFIG._replace(acquisition=Acquisition("first", ACQUISITIONS["bald"].score, first_unlabeled))
    _, info = loop.step(before, data, config, oracle)
    np.testing.assert_array_equal(info.acquired, np.flatnonzero(~labeled)[:ACQUIRE])
    with pytest.raises(JalError, match="does not apply to first"):
        loop.check_config(config._replace(sampling="power"))


@pytest.mark.slow
def test_the_loop_runs_any_model_on_any_inputs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 6
    labels = rng.integers(0, 3, 90)
    inputs = (centers[labels] + rng.normal(size=(90, 6))).astype(np.float32)
    data = loop.Data(jnp.asarray(inputs[:60]), jnp.asarray(inputs[60:]), jnp.asarray(labels[60:], jnp.int32))
    model = build_model("mlp", (6,), 3, hidden_sizes=(16,))
    train = TrainConfig(epochs=3, min_samples_per_epoch=1024, learning_rate=1e-2)
    config = CONFIG._replace(model=model, acquire=2, mc_samples=8, train=train)
    oracle = loop.dataset_oracle(labels[:60])
    initial = loop.balanced_initial_indices(labels[:60], 2, seed=0, num_classes=3)
    assert sorted(labels[initial].tolist()) == [0, 0, 1, 1, 2, 2]
    state = loop.init(jax.random.key(0), 60, initial, oracle(initial), num_classes=3)
    seen = []
    state = loop.run(state, data, config, oracle, iterations=3, callback=seen.append)
    assert int(state.num_labeled) == 12 and [np.asarray(i.pool_scores).shape for i in seen] == [(60,)] * 4
    assert float(seen[-1].test_accuracy) > 0.9  # three well-separated blobs
    with pytest.raises(JalError, match="0..2"):
        loop.init(jax.random.key(0), 60, [0], [3], num_classes=3)
