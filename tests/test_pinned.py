"""The LeNet path computes what it computed before models, data and acquisitions became pluggable."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import loop
from jal.data import make_pool
from jal.data.mnist import load_idx_dir
from jal.models.lenet5 import LeNet5
from jal.train import TrainConfig

PINNED = json.loads((Path(__file__).parent / "pinned" / "lenet5_mnist.json").read_text())
RUNS = {  # the settings of each pinned run, beyond acquire 4, 3 iterations, 20 initial labels, seed 42
    "bald": dict(acquisition="bald", mc_samples=16),
    "batchbald": dict(acquisition="batchbald", mc_samples=8),
    "bald_power": dict(acquisition="bald", sampling="power", mc_samples=16),
    "epig": dict(acquisition="epig", epig_targets=20, mc_samples=16),
    "random": dict(acquisition="random", mc_samples=16),
}


@pytest.fixture(scope="module")
def mnist_problem(mnist_dir):
    dataset = load_idx_dir(mnist_dir)
    normalize = dataset.normalization.apply
    pool = make_pool(len(dataset.x_train), 500, seed=1)
    data = loop.Data(
        jnp.asarray(normalize(dataset.x_train[pool])),
        jnp.asarray(normalize(dataset.x_test[:1000])),
        jnp.asarray(dataset.y_test[:1000]),
    )
    return data, dataset.y_train[pool]


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_a_seeded_lenet_run_is_what_it_was(mnist_problem, name):
    data, pool_labels = mnist_problem
    train = TrainConfig(epochs=1, min_samples_per_epoch=640)
    config = loop.LoopConfig(model=LeNet5(), acquire=4, train=train, **RUNS[name])
    oracle = loop.dataset_oracle(pool_labels)
    initial = loop.initial_indices(500, 20, seed=42)
    infos = []
    loop.run(loop.init(jax.random.key(42), 500, initial, oracle(initial)), data, config, oracle, iterations=3,
             callback=infos.append)  # fmt: skip
    pinned = PINNED[name]
    assert [np.asarray(info.acquired).tolist() for info in infos] == pinned["acquired"]
    np.testing.assert_allclose([float(info.test_accuracy) for info in infos], pinned["test_accuracy"], atol=1e-6)
    # The scores themselves, to float rounding: the native kernels and XLA ops differ in it.
    sums = [float(np.asarray(info.pool_scores).sum()) for info in infos]
    np.testing.assert_allclose(sums, pinned["pool_score_sum"], rtol=1e-4)
