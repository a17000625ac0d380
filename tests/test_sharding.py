"""Scoring and the loop split over 1, 2 and 8 devices (forced CPU devices) give the same bits as one.

JAX fixes its device count at start-up, so each check runs in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=8 and compares meshes of 1, 2 and 8
of those devices (and 3, which divides neither the pool nor the chunks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def forced_devices(code: str, count: int = 8) -> dict:
    """Runs `code` with `count` CPU devices; it prints one JSON object as its last line."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SCORING = """
import json, jax, numpy as np
from jal.models import build_model
from jal.scoring import mc_log_probs, score_pool
from jal.sharding import data_mesh
out = {}
for name, shape in (("lenet5", (28, 28, 1)), ("mlp", (20,))):
    model = build_model(name, shape, 10)
    params = model.init(jax.random.key(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (301, *shape)))  # 301: prime, divides nothing
    key = jax.random.key(2)
    for d in (1, 2, 3, 8):
        mesh = data_mesh(jax.devices()[:d])
        log_probs = mc_log_probs(model, params, x, key=key, mc_samples=4, chunk_size=16, mesh=mesh)
        consistent = mc_log_probs(model, params, x, key=key, mc_samples=4, chunk_size=16, consistent=True, mesh=mesh)
        scores = score_pool(model, params, x, key=key, mc_samples=4, chunk_size=16, batch_size=64, mesh=mesh)
        out[f"{name}/{d}"] = [np.asarray(a).tobytes().hex() for a in (log_probs, consistent, scores)]
print(json.dumps(out))
"""


def test_scores_are_the_same_bits_on_1_2_3_and_8_devices_for_a_pool_that_divides_nothing():
    out = forced_devices(SCORING)
    for name in ("lenet5", "mlp"):
        one = out[f"{name}/1"]
        for d in (2, 3, 8):
            assert out[f"{name}/{d}"] == one, f"{name} on {d} devices"


LOOP = """
import json, sys, jax, numpy as np, jax.numpy as jnp
from sklearn.datasets import load_digits
from jal import loop
from jal.models import build_model
from jal.sharding import data_mesh, spread
from jal.train import TrainConfig
acquisition, groups, pool_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x, y = load_digits(return_X_y=True)
x = (x / 16).astype(np.float32)
config = loop.LoopConfig(model=build_model("mlp", (64,), 10), acquisition=acquisition, acquire=3, mc_samples=4,
                         chunk_size=16, joint_samples=200, epig_targets=20,
                         train=TrainConfig(epochs=1, min_samples_per_epoch=128, groups=groups))
out = {}
for d in (1, 2, 8):
    mesh = data_mesh(jax.devices()[:d])
    data = loop.Data(spread(jnp.asarray(x[:pool_size]), mesh), jnp.asarray(x[1400:]), jnp.asarray(y[1400:]))
    state = loop.init(jax.random.key(0), pool_size, np.arange(10), y[:10], num_classes=10)
    infos = []
    loop.run(state, data, config, loop.dataset_oracle(y[:pool_size]), iterations=2, callback=infos.append, mesh=mesh)
    out[d] = {
        "acquired": [np.asarray(i.acquired).tolist() for i in infos],
        "pool_scores": [np.asarray(i.pool_scores).tolist() for i in infos],
        "bits": [np.concatenate([np.asarray(i.pool_scores).ravel(), np.asarray(i.test_scores).ravel(),
                 np.asarray(i.train_loss).ravel(), np.asarray(i.test_accuracy).ravel()]
                 + [np.asarray(p).ravel() for p in jax.tree.leaves(i.params)]).tobytes().hex() for i in infos],
    }
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "acquisition, groups, pool_size",
    [("bald", 1, 1200), ("bald", 4, 1203), ("batchbald", 2, 1200), ("random", 8, 1000)],
)
def test_a_run_is_the_same_bits_on_1_2_and_8_devices(acquisition, groups, pool_size):
    out = forced_devices(LOOP.replace("sys.argv[1], int(sys.argv[2]), int(sys.argv[3])",
                                      f"{acquisition!r}, {groups}, {pool_size}"))  # fmt: skip
    for d in ("2", "8"):
        assert out[d]["acquired"] == out["1"]["acquired"], f"acquisitions on {d} devices"
        assert out[d]["bits"] == out["1"]["bits"], f"scores, losses or parameters on {d} devices"
    assert len({tuple(a) for a in out["1"]["acquired"][:2]}) == 2  # a real run: it acquired, and differently


def test_epig_acquires_the_same_on_any_mesh_and_scores_within_rounding():
    # XLA's CPU compiler splits EPIG's large reduction (targets x C x C) into windows when
    # a program spans several devices, so its scores may differ in the last bits.
    out = forced_devices(LOOP.replace("sys.argv[1], int(sys.argv[2]), int(sys.argv[3])", "'epig', 2, 1200"))
    for d in ("2", "8"):
        assert out[d]["acquired"] == out["1"]["acquired"]
        np.testing.assert_allclose(out[d]["pool_scores"], out["1"]["pool_scores"], rtol=1e-5, atol=1e-6)


def test_gradient_groups_change_the_model_and_a_batch_that_they_do_not_divide_is_refused():
    import jax

    from jal.errors import JalError
    from jal.models import build_model
    from jal.train import TrainConfig, check_config, train

    model = build_model("mlp", (8,), 3)
    x = np.asarray(jax.random.normal(jax.random.key(0), (40, 8)))
    labels, order = np.arange(40) % 3, np.arange(40)

    def trained(groups):
        config = TrainConfig(epochs=1, batch_size=8, min_samples_per_epoch=40, groups=groups)
        return train(jax.random.key(1), model, x, labels, order, 40, config=config, samples_per_epoch=40)

    (one, loss_one), (four, loss_four) = trained(1), trained(4)
    # Each group draws its own dropout masks, so the model differs, but it learns alike.
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True))
    np.testing.assert_allclose(loss_one, loss_four, rtol=0.2)
    with pytest.raises(JalError, match="`batch_size` 64 must be a multiple of `groups` 5"):
        check_config(TrainConfig(groups=5))


SPREAD = """
import json, jax, numpy as np
from jal.sharding import data_mesh, spread
out = {}
for rows in (8, 7):  # 8 divides over 4 devices; 7 does not
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    reads = []

    class Lazy:  # a view read only where sliced, as a memory map's
        shape = x.shape

        def __getitem__(self, part):
            reads.append([part.start, part.stop])
            return x[part]

    array = spread(Lazy(), data_mesh(jax.devices()[:4]), prepare=lambda part: part * 2)
    out[rows] = {"reads": sorted(reads, key=str), "same": bool((np.asarray(array) == 2 * x).all()),
                 "shards": [list(s.data.shape) for s in array.addressable_shards]}
print(json.dumps(out))
"""


def test_spread_reads_each_devices_rows_alone_and_a_pool_they_do_not_divide_once_whole():
    out = forced_devices(SPREAD, count=4)
    assert out["8"] == {"reads": [[0, 2], [2, 4], [4, 6], [6, 8]], "same": True, "shards": [[2, 3]] * 4}
    assert out["7"] == {"reads": [[None, None]], "same": True, "shards": [[7, 3]] * 4}
