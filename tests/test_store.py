import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import store, workdir
from jal.errors import JalError
from jal.loop import StepInfo
from jal.models.lenet5 import init_params

MODEL_SIZE = 184_586


def info(iteration, pool=6, test=4):
    return StepInfo(
        iteration=jnp.int32(iteration),
        num_labeled=jnp.int32(2 + iteration),
        test_accuracy=jnp.float32(0.5),
        test_nll=jnp.float32(1.25),
        train_loss=jnp.array([2.0, 1.0]),
        pool_scores=jnp.arange(pool, dtype=jnp.float32) + iteration,
        test_scores=jnp.ones(test),
        acquired=jnp.array([5], jnp.int32),
        acquired_scores=jnp.array([5.0 + iteration]),
        params=init_params(jax.random.key(iteration)),
    )


@pytest.mark.slow
def test_writes_as_it_goes_and_reads_back(tmp_path):
    run = tmp_path / "run"
    config = {"loop": {"acquisition": "bald"}, "record": {"initial_indices": [0]}}
    writer = store.RunWriter.create(
        run, config, pool_indices=np.arange(6) * 10, rounds=3, test_size=4, model_size=MODEL_SIZE
    )
    writer.append(info(0), 1.5)
    writer.append(info(1), 0.5)
    # Mid-run (as after an interruption), finished rounds are on disk and the rest is NaN.
    pool = store.read_scores(run, "pool")
    assert pool.shape == (3, 6)
    np.testing.assert_array_equal(pool[1], np.arange(6) + 1)
    assert np.isnan(pool[2]).all()
    metrics = store.read_metrics(run)
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert metrics[1] == {
        "iteration": 1, "num_labeled": 3, "test_accuracy": 0.5, "test_nll": 1.25, "train_loss": [2.0, 1.0],
        "acquired": [5], "acquired_scores": [6.0], "mean_pool_score": 3.5, "max_pool_score": 6.0, "seconds": 0.5,
    }  # fmt: skip
    assert store.read_config(run) == config
    np.testing.assert_array_equal(np.load(run / "pool_indices.npy"), np.arange(6) * 10)
    # Each round's model comes back as it was trained; an unfinished round is an error.
    template = init_params(jax.random.key(0))
    model = store.read_model(run, 1, template)
    jax.tree.map(np.testing.assert_array_equal, model, init_params(jax.random.key(1)))
    with pytest.raises(JalError, match="did not finish"):
        store.read_model(run, 2, template)
    with pytest.raises(JalError, match="not round 1 of 10 parameters"):  # another model's layout
        store.read_model(run, 1, {"w": jnp.zeros(10)})
    # The history of the finished rounds, with what was labeled when each was trained.
    _, metrics, history, labeled = store.read_history(run)
    assert history.shape == (2, 6) and labeled[0].tolist() == [True] + [False] * 5
    assert labeled[1].tolist() == [True] + [False] * 4 + [True]
    (run / store.CONFIG).write_text(json.dumps({"loop": {}}))
    with pytest.raises(JalError, match="written by an older jal"):
        store.read_config(run)
    writer.close()


def test_torn_last_line_is_skipped_but_corruption_is_not(tmp_path):
    (tmp_path / store.METRICS).write_text(json.dumps({"iteration": 0}) + "\n" + '{"iteration": 1, "num')
    assert store.read_metrics(tmp_path) == [{"iteration": 0}]
    (tmp_path / store.METRICS).write_text('{"iteration": 0, "num\n{"iteration": 1}\n')
    with pytest.raises(JalError, match="corrupt"):
        store.read_metrics(tmp_path)


def test_refuses_a_non_empty_folder_and_leaves_it_untouched(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(JalError, match="not an empty folder"):
        with workdir.writing(tmp_path, fresh=True, leftovers=store.unstarted, committed=lambda: False):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(JalError, match="jal run directory"):
        store.read_metrics(tmp_path)


def test_an_analysis_without_what_is_read_from_it_is_refused(tmp_path):
    assert store.read_analysis(tmp_path) is None
    (tmp_path / store.ANALYSIS).write_text(json.dumps({"by_mc_samples": {}}))
    with pytest.raises(JalError, match="not a jal analysis; run jal analyze again"):
        store.read_analysis(tmp_path)


def test_the_recorded_commit_says_when_jals_code_differs_from_it(tmp_path):
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(tmp_path)]
    (tmp_path / "jal").mkdir()
    (tmp_path / "jal" / "x.py").write_text("a = 1\n")
    (tmp_path / "notes.txt").write_text("1\n")
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *command], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert store._commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("2\n")
    assert store._commit(tmp_path) == head  # a change outside jal/ changes no result
    (tmp_path / "jal" / "x.py").write_text("a = 2\n")
    assert store._commit(tmp_path) == head + "-dirty"
