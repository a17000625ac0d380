import jax.numpy as jnp
import numpy as np
import pytest

from jal.acquire import Acquisition
from jal.acquire.estimators import bald
from jal.errors import JalError
from jal.learner import ActiveLearner
from jal.loop import LoopConfig
from jal.models import build_model
from jal.train import TrainConfig

CONFIG = LoopConfig(acquire=3, mc_samples=8, train=TrainConfig(epochs=1, min_samples_per_epoch=256, learning_rate=1e-2))


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    labels = rng.integers(0, 3, 130)
    inputs = (centers[labels] + rng.normal(size=(130, 8))).astype(np.float32)
    return inputs[:100], labels[:100], inputs[100:], labels[100:]


def make(blobs, **kwargs):
    pool, labels, test, test_labels = blobs
    model = build_model("mlp", (8,), 3, hidden_sizes=(16,))
    initial = np.arange(6)
    return ActiveLearner(model, pool, test, test_labels, initial_indices=initial, initial_labels=labels[initial],
                         config=kwargs.pop("config", CONFIG), **kwargs)  # fmt: skip


@pytest.mark.slow
def test_query_teach_and_the_same_next_query_after_save_and_load(blobs, tmp_path):
    pool, labels, test, test_labels = blobs
    learner = make(blobs, seed=3)
    first = learner.query()
    assert len(first) == 3 and not learner.labeled[first].any()
    np.testing.assert_array_equal(learner.query(), first)  # querying again changes nothing
    learner.teach(first, labels[first])
    assert learner.labeled.sum() == 9 and learner.labeled[first].all()
    path = learner.save(tmp_path / "learner.npz")
    expected = learner.query()
    loaded = ActiveLearner.load(path, learner.model, pool, test, test_labels)
    np.testing.assert_array_equal(loaded.query(), expected)
    # The same pool in another dtype is the same pool, as the learner holds it (float32).
    widened = ActiveLearner.load(path, learner.model, pool.astype(np.float64), test, test_labels)
    np.testing.assert_array_equal(widened.query(), expected)
    np.testing.assert_array_equal(loaded.last.pool_scores, learner.last.pool_scores)
    assert 0 <= float(loaded.last.test_accuracy) <= 1
    # A learner over another pool is refused, and a broken file gives a one-line error.
    with pytest.raises(JalError, match="saved over another pool"):
        ActiveLearner.load(path, learner.model, pool[::-1], test, test_labels)
    (tmp_path / "broken.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(JalError, match="broken.npz: cannot read it"):
        ActiveLearner.load(tmp_path / "broken.npz", learner.model, pool)
    with pytest.raises(JalError, match="labels must be classes 0..2"):
        learner.teach([int(np.flatnonzero(~learner.labeled)[0])], [3])


@pytest.mark.slow
def test_ones_own_acquisition_and_no_test_set(blobs, tmp_path):
    pool = blobs[0]

    def least_bald(log_probs, targets):
        return -bald(log_probs)

    config = CONFIG._replace(acquisition=Acquisition("least_bald", least_bald))
    learner = make(blobs, config=config)
    chosen = learner.query()
    scores = np.asarray(learner.last.pool_scores)
    np.testing.assert_allclose(scores[chosen], np.sort(scores[~learner.labeled])[::-1][:3])
    path = learner.save(tmp_path / "own.npz")
    # One's own acquisition is code: it comes back with load.
    loaded = ActiveLearner.load(path, learner.model, pool, acquisition=config.acquisition)
    np.testing.assert_array_equal(loaded.query(), chosen)
    assert np.isnan(float(loaded.last.test_accuracy))  # no test set
    with pytest.raises(JalError, match="unknown acquisition 'least_bald'"):
        ActiveLearner.load(path, learner.model, pool).query()
    with pytest.raises(JalError, match="the model takes"):
        ActiveLearner(learner.model, jnp.zeros((5, 4)), initial_indices=[0], initial_labels=[0])
