"""The streamed loop (`jal.streamed`) against the in-memory loop, and what keeps a large pool small."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import experiment, loop, resources, store, streamed
from jal.cli import main
from jal.config import ModelSpec, RunConfig
from jal.data import DataConfig, from_training
from jal.data.host import PoolRows
from jal.errors import JalError
from jal.models import build_model
from jal.train import TrainConfig

POOL, TEST, FEATURES, CLASSES, INITIAL, ACQUIRE, ITERATIONS = 400, 100, 16, 4, 10, 5, 3
MODEL = build_model("mlp", (FEATURES,), CLASSES, hidden_sizes=(32,))
CONFIG = loop.LoopConfig(
    model=MODEL, acquire=ACQUIRE, mc_samples=8, chunk_size=16, train=TrainConfig(epochs=2, min_samples_per_epoch=128)
)
# Two pool scores of one input agree to this: the MC log-probabilities are the same bits
# (same dropout draws, same inputs), but XLA fuses a score's reductions over K and C
# differently for a batch than for the whole pool, and on the device divides by the
# normalisation's std as a multiply by its reciprocal: a few float32 ulps.
SCORE_TOLERANCE = 2e-6


def features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes from four noisy clusters: a small, learnable problem."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centers = np.random.default_rng(0).uniform(60, 200, (CLASSES, FEATURES))
    return np.clip(centers[labels] + rng.normal(0, 40, (n, FEATURES)), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """The pool as a uint8 memmap, its normalisation, the test set and an oracle."""
    x, y = features(POOL, 1)
    x_test, y_test = features(TEST, 2)
    path = tmp_path_factory.mktemp("pool") / "x.npy"
    np.save(path, x)
    normalization = from_training(x)
    test = (jnp.asarray(normalization.apply(x_test)), jnp.asarray(y_test, jnp.int32))
    return np.load(path, mmap_mode="r"), normalization, test, loop.dataset_oracle(y)


def run_loop(data, config, oracle) -> list[loop.StepInfo]:
    initial = loop.initial_indices(POOL, INITIAL, 0)
    infos = []
    state = loop.init(jax.random.key(0), POOL, initial, oracle(initial))
    loop.run(state, data, config, oracle, iterations=ITERATIONS, callback=infos.append)
    return infos


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, {"acquisition": "random"}, {"consistent": True}], ids=str)
def test_the_streamed_loop_proposes_what_the_in_memory_loop_does(problem, settings):
    pool, normalization, test, oracle = problem
    config = CONFIG._replace(**settings)
    in_memory = run_loop(loop.Data(jnp.asarray(normalization.apply(np.asarray(pool))), *test), config, oracle)
    max_labels = INITIAL + ACQUIRE * ITERATIONS
    host = streamed.HostData(pool, *test, normalization=normalization, max_labels=max_labels, batch_size=96)
    on_host = run_loop(host, config, oracle)
    assert len(on_host) == ITERATIONS + 1
    for a, b in zip(in_memory, on_host, strict=True):
        # Training on the gathered labeled rows: the same parameters, bit for bit.
        jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
        for field in ("acquired", "train_loss", "test_scores", "test_accuracy", "test_nll", "num_labeled"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        np.testing.assert_allclose(b.pool_scores, a.pool_scores, rtol=0, atol=SCORE_TOLERANCE)
        np.testing.assert_allclose(b.acquired_scores, a.acquired_scores, rtol=0, atol=SCORE_TOLERANCE)


def test_nothing_recompiles_from_round_to_round(problem):
    pool, normalization, test, oracle = problem
    host = streamed.HostData(pool, *test, normalization=normalization, max_labels=INITIAL + ACQUIRE * ITERATIONS)
    compiles = []
    counting = [False]

    def listener(name, seconds, **kwargs):
        if counting[0] and name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    initial = loop.initial_indices(POOL, INITIAL, 1)
    state = loop.init(jax.random.key(1), POOL, initial, oracle(initial))
    state, _ = loop.step(state, host, CONFIG, oracle)  # the first round compiles
    counting[0] = True
    for _ in range(ITERATIONS - 1):
        state, _ = loop.step(state, host, CONFIG, oracle)
    counting[0] = False
    assert compiles == []


def test_the_training_buffer_grows_by_doubling_or_is_fixed():
    assert [streamed.buffer_size(n, None) for n in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]
    assert streamed.buffer_size(7, 25) == 25
    with pytest.raises(JalError, match="26 labels exceed `max_labels` 25, the training buffer's size; raise it"):
        streamed.buffer_size(26, 25)


@pytest.mark.parametrize("acquisition", ["batchbald", "epig"])
def test_acquisitions_that_read_the_pools_log_probs_are_refused(problem, acquisition):
    pool, normalization, test, oracle = problem
    state = loop.init(jax.random.key(0), POOL, [0, 1], oracle(np.array([0, 1])))
    host = streamed.HostData(pool, *test, normalization=normalization)
    with pytest.raises(JalError, match=f"^{acquisition} chooses from the pool's MC log-probabilities.*`stream`"):
        loop.propose(state, host, CONFIG._replace(acquisition=acquisition))


def test_raw_pool_inputs_need_their_normalization(problem):
    pool, _, test, oracle = problem
    state = loop.init(jax.random.key(0), POOL, [0, 1], oracle(np.array([0, 1])))
    with pytest.raises(JalError, match="`pool_inputs` of uint8: pass normalised floats, or raw ones with"):
        loop.propose(state, streamed.HostData(pool, *test), CONFIG)


def test_pool_rows_read_what_they_are_asked_for(problem):
    pool = problem[0]
    indices = np.random.default_rng(0).permutation(POOL)[:50]
    rows = PoolRows(pool, indices)
    assert rows.shape == (50, FEATURES) and len(rows) == 50 and rows.dtype == np.uint8 and rows.ndim == 2
    assert rows.file is not None  # read from the file, not through the map
    # A map, views of it (rows from the 10th, a channel axis, every other column) and an array in memory.
    for split in (pool, pool[10:], pool.reshape(POOL, 4, 4, 1), pool[:, ::2], np.array(pool)):
        rows = PoolRows(split, indices[indices < len(split)])
        wanted = np.asarray(split)[rows.indices]
        np.testing.assert_array_equal(rows[3:9], wanted[3:9])
        np.testing.assert_array_equal(rows[np.array([7, 2])], wanted[[7, 2]])
    assert PoolRows(pool[:, ::2], indices).file is None and PoolRows(np.array(pool), indices).file is None


def resident_file_kb() -> int:
    """This process's resident pages of mapped files (RssFile), in KiB."""
    return int(re.search(r"RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_memmap_read_through_pool_rows_does_not_stay_resident(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((2**16, 1024), np.uint8))  # 64 MiB
    big = np.load(path, mmap_mode="r")
    before = resident_file_kb()
    rows = PoolRows(big, np.random.default_rng(0).permutation(len(big)))  # at random: the worst case for a map
    for start in range(0, len(big), 4096):
        assert rows[start : start + 4096].sum() == 4096 * 1024
    assert resident_file_kb() - before < 16 * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_writing_score_rows_keeps_none_resident(tmp_path):
    rounds, size = 20, 2**20  # 80 MiB of float32 rows
    writer = store.RunWriter.create(tmp_path / "run", {}, pool_indices=np.arange(size), rounds=rounds, test_size=0,
                                    model_size=4)  # fmt: skip
    before = resident_file_kb()
    row = np.ones(size, np.float32)
    for round_ in range(rounds):
        writer.pool_scores.write(round_, row * round_)
        writer.pool_scores.sync()
    assert resident_file_kb() - before < 8 * 1024
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "run" / store.POOL_SCORES)[:, 0], np.arange(rounds))


def test_a_check_that_fails_for_the_pool_suggests_streaming():
    needs = {"pool_size": (8 * 2**30, "10000000 inputs"), "chunk_size": (2**20, "32 inputs")}
    with pytest.raises(JalError, match=r"lower `pool_size`, or keep the pool on the host with `stream`$"):
        resources.check_fits(needs, available=2**30, streamable=True)
    with pytest.raises(JalError, match=r"lower `pool_size`$"):
        resources.check_fits(needs, available=2**30)
    in_memory = resources.loop_needs(CONFIG, pool_size=10**7, test_size=10**4)["pool_size"][0]
    on_host = resources.loop_needs(CONFIG, pool_size=10**7, test_size=10**4, streamed=True)["pool_size"][0]
    assert on_host < in_memory / 5


@pytest.fixture(scope="module")
def npy_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("npy")
    (x, y), (x_test, y_test) = features(POOL, 1), features(TEST, 2)
    for key, array in (("x_train", x), ("y_train", y), ("x_test", x_test), ("y_test", y_test)):
        np.save(folder / f"{key}.npy", array)
    return folder


def run_config(folder: Path, **settings) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(folder), pool_size=300),
        model=ModelSpec("mlp", {"hidden_sizes": (32,)}),
        loop=CONFIG._replace(model=loop.LoopConfig().model),
        initial=10,
        iterations=ITERATIONS,
        **settings,
    )


def metrics_but_seconds(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in store.read_metrics(run_dir)]


@pytest.fixture(scope="module")
def runs(npy_folder, tmp_path_factory) -> Path:
    """The same run with its pool in memory, streamed with a float16 history, and streamed, cut and resumed."""
    root = tmp_path_factory.mktemp("runs")
    experiment.run(run_config(npy_folder), root / "memory")
    config = run_config(npy_folder, stream=True, history_dtype="float16")
    experiment.run(config, root / "whole")

    def interrupt(metrics):
        if metrics["iteration"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(JalError, match="interrupted"):
        experiment.run(config, root / "cut", on_round=interrupt)
    experiment.run(config, root / "cut", resume=True)
    return root


@pytest.mark.slow
def test_jal_run_streams_resumes_and_keeps_a_float16_history(runs):
    for name in (store.POOL_SCORES, store.TEST_SCORES, store.MODELS, store.POOL_INDICES):
        assert (runs / "whole" / name).read_bytes() == (runs / "cut" / name).read_bytes(), name
    assert metrics_but_seconds(runs / "whole") == metrics_but_seconds(runs / "cut")
    # The same acquisitions as with the pool in memory, and a float16 history read as float32.
    memory, whole = store.read_metrics(runs / "memory"), store.read_metrics(runs / "whole")
    assert [m["acquired"] for m in memory] == [m["acquired"] for m in whole]
    assert np.load(runs / "whole" / store.POOL_SCORES).dtype == np.float16
    store.check_run_dir(runs / "whole")
    _, _, history, _ = store.read_history(runs / "whole")
    assert history.dtype == np.float32
    np.testing.assert_allclose(history, np.load(runs / "memory" / store.POOL_SCORES), rtol=2**-10, atol=1e-6)
    assert json.loads((runs / "whole" / store.CONFIG).read_text())["stream"] is True


@pytest.mark.slow
def test_every_reader_of_a_score_history_takes_float16(runs, tmp_path):
    memory, whole = str(runs / "memory"), str(runs / "whole")
    assert main(["plot", memory, whole, "--out", str(tmp_path / "plot.png"), "--quiet"]) == 0
    assert main(["compare", whole, "--quiet"]) == 0
    assert main(["analyze", whole, "--subset", "20", "--mc-samples", "4", "--no-retrain", "--quiet"]) == 0
    assert main(["figures", memory, whole, "--out", str(tmp_path / "figures"), "--quiet"]) == 0
    assert main(["report", memory, whole, "--out", str(tmp_path / "report.html"), "--quiet"]) == 0


def test_jal_run_refuses_stream_with_what_needs_the_pool_in_memory(npy_folder, tmp_path, capsys):
    given = ["run", "--data", str(npy_folder), "--model", "mlp", "--stream"]
    assert main([*given, "--out", str(tmp_path / "a"), "--acquisition", "batchbald"]) == 2
    error = capsys.readouterr().err
    assert "batchbald chooses from the pool's MC log-probabilities" in error and "(without --stream)" in error
    assert main([*given, "--out", str(tmp_path / "b"), "--filter-fraction", "0.5"]) == 2
    assert "--filter-fraction filters a pool held in memory; run it without --stream" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
