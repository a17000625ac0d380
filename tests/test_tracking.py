"""Experiment tracking: what W&B (offline) and TensorBoard receive, read back from their files; failures only warn."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jal import tracking
from jal.errors import JalError

P, T = 50, 20  # pool and test set sizes of the synthetic rounds
CONFIG = {"data": {"path": None}, "model": {"name": "lenet5"}, "loop": {"acquisition": "bald", "mc_samples": 32},
          "iterations": 2, "seed": 42, "record": {"initial_indices": [1, 2, 3]}}  # fmt: skip


def synthetic_rounds(input_shape=(28, 28, 1), acquire=2):
    """Three rounds as `jal run` reports them: metrics, pool and test scores, acquired inputs (none at the end)."""
    rng = np.random.default_rng(0)
    rounds = []
    for i in range(3):
        last = i == 2
        acquired_scores = [] if last else sorted(rng.uniform(0.5, 1.0, acquire).tolist(), reverse=True)
        metrics = {
            "iteration": i,
            "num_labeled": 3 + acquire * i,
            "test_accuracy": 0.5 + 0.1 * i,
            "test_nll": 1.5 - 0.25 * i,
            "train_loss": [2.0, 1.0 - 0.1 * i],
            "acquired": [] if last else rng.choice(P, acquire, replace=False).tolist(),
            "acquired_scores": acquired_scores,
            "mean_pool_score": 0.2 + 0.01 * i,
            "max_pool_score": 0.9 - 0.01 * i,
            "seconds": 1.0 + i,
        }
        pool_scores = rng.uniform(0, 1, P).astype(np.float32)
        test_scores = rng.uniform(0, 1, T).astype(np.float32)
        inputs = rng.integers(0, 256, (len(acquired_scores), *input_shape), dtype=np.uint8)
        rounds.append((metrics, pool_scores, test_scores, inputs))
    return rounds


def drive(tracker, rounds, run_dir) -> None:
    tracker.start(CONFIG, run_dir)
    for round_ in rounds:
        tracker.log_round(*round_)
    tracker.finish("finished")


# W&B's offline run file: a LevelDB-style log of `wandb_internal_pb2.Record` protobufs,
# after a 7-byte header, in blocks of 32 KiB whose chunks carry a 7-byte header each.
WANDB_BLOCK, FULL, FIRST, LAST = 32768, 1, 2, 4


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a W&B run file of the known version"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero-padded tail
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def nested(items) -> dict:
    """History or config items (key or nested_key, value_json) as a nested dict."""
    out = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def test_wandb_offline_logs_every_round(wandb_env, monkeypatch, capfd):
    import wandb
    from PIL import Image

    monkeypatch.setenv("WANDB_MODE", "offline")
    rounds = synthetic_rounds()
    drive(tracking.trackers_from(wandb="jal-test"), rounds, wandb_env / "runs" / "bald-seed42")
    assert "jal: warning" not in capfd.readouterr().err
    wandb.teardown()  # its service writes the run file out when it stops

    [run_file] = (wandb_env / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("jal-test", "bald-seed42")
    assert run.run_group == tracking.group_name(CONFIG)
    config = nested(run.config.update)
    assert config["loop"] == CONFIG["loop"] and config["seed"] == 42 and config["record"] == CONFIG["record"]
    metrics = {(m.name or m.glob_name): m.step_metric for r in records if (m := r.metric).name or m.glob_name}
    assert metrics == {"labels": "", "*": "labels"}  # every metric plotted against the number of labels
    assert kinds.count("history") == 3 and records[kinds.index("exit")].exit.exit_code == 0

    history = [nested(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    for row, (m, pool_scores, test_scores, inputs) in zip(history, rounds, strict=True):
        assert row["labels"] == m["num_labeled"] and row["iteration"] == m["iteration"]
        expected = {"test/accuracy": m["test_accuracy"], "test/nll": m["test_nll"], "train/loss": m["train_loss"][-1],
                    "pool/mean_score": m["mean_pool_score"], "pool/max_score": m["max_pool_score"]}  # fmt: skip
        assert {k: row[k] for k in expected} == pytest.approx(expected)
        for key, scores in (("pool/scores", pool_scores), ("test/scores", test_scores)):
            assert row[key]["_type"] == "histogram" and sum(row[key]["values"]) == len(scores)
            assert row[key]["bins"][0] == pytest.approx(scores.min()) and row[key]["bins"][-1] == pytest.approx(
                scores.max()
            )
        assert not any(isinstance(v, list) and len(v) >= P for v in row.values())  # never every score as a table
        if not m["acquired_scores"]:
            assert "acquired/images" not in row and "acquired/scores" not in row
            continue
        assert row["acquired/mean_score"] == pytest.approx(np.mean(m["acquired_scores"]))
        assert sum(row["acquired/scores"]["values"]) == len(m["acquired_scores"])
        images = row["acquired/images"]
        assert images["captions"] == [f"{s:.4f}" for s in m["acquired_scores"]]
        for filename, image in zip(images["filenames"], inputs, strict=True):
            saved = np.asarray(Image.open(run_file.parent / "files" / filename))
            np.testing.assert_array_equal(saved, image[..., 0])


@pytest.mark.parametrize("offline", ["no login", "no network"])
def test_wandb_unreachable_warns_once_and_the_run_goes_on(wandb_env, monkeypatch, capfd, offline):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    if offline == "no network":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    rounds = synthetic_rounds()
    tensorboard = RecordingTracker()
    wandb_tracker = tracking.WandbTracker("jal-test", init_timeout=1)
    drive(tracking.combine(wandb_tracker, tensorboard), rounds, wandb_env / "run")

    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("jal: warning:")]
    assert len(warnings) == 1 and "W&B tracking failed in start" in warnings[0]
    assert ("No API key" if offline == "no login" else "127.0.0.1:9") in warnings[0]
    assert wandb_tracker.run is None  # nothing after the failure reached W&B
    assert [call[0] for call in tensorboard.calls] == ["start", "log_round", "log_round", "log_round", "finish"]


class RecordingTracker:
    def __init__(self, fail_in: str | None = None):
        self.calls, self.fail_in = [], fail_in

    def _record(self, name, *args):
        self.calls.append((name, *args))
        if name == self.fail_in:
            raise RuntimeError(f"broken\n{name}")  # a message of two lines still warns on one

    def start(self, config, run_dir):
        self._record("start", config, run_dir)

    def log_round(self, metrics, pool_scores, test_scores=None, acquired_inputs=None):
        self._record("log_round", metrics["iteration"])

    def finish(self, state="finished"):
        self._record("finish", state)


@pytest.mark.parametrize("fail_in", ["start", "log_round", "finish"])
def test_a_failing_tracker_warns_once_then_does_nothing(tmp_path, capfd, fail_in):
    broken, sound = RecordingTracker(fail_in), RecordingTracker()
    combined = tracking.combine(broken, sound)
    drive(combined, synthetic_rounds(), tmp_path)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jal: warning: RecordingTracker failed in " + fail_in)
    assert [t.active for t in combined.trackers] == [False, True] and combined.active
    every = ["start", "log_round", "log_round", "log_round", "finish"]
    assert [c[0] for c in broken.calls] == every[: every.index(fail_in) + 1]  # none after the failure
    assert [c[0] for c in sound.calls] == every
    assert sound.calls[-1] == ("finish", "finished")


@pytest.mark.parametrize(("tracker", "extra"), [(tracking.WandbTracker("p"), "wandb"),
                                                 (tracking.TensorBoardTracker("tb"), "tensorboard")])  # fmt: skip
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, capfd, tracker, extra):
    monkeypatch.setitem(sys.modules, {"wandb": "wandb", "tensorboard": "tensorboardX"}[extra], None)  # not importable
    drive(tracking.combine(tracker), synthetic_rounds(), tmp_path)
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith("jal: warning:") and f"pip install 'jal[{extra}]'" in line


def test_importing_tracking_imports_no_tracking_package():
    code = "import sys, jal.tracking; print(sorted({'wandb', 'tensorboardX'} & sys.modules.keys()))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# TensorBoard's event files: TFRecords (length, its CRC, data, its CRC) of `Event` protobufs.
def tensorboard_events(logdir: Path) -> list:
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (8, 8, 3), (16, 16), (64,)], ids=str)
def test_tensorboard_logs_every_round(tmp_path, capfd, input_shape):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (pip install 'jal[tensorboard]')")
    rounds = synthetic_rounds(input_shape)
    drive(tracking.trackers_from(tensorboard=str(tmp_path / "tb")), rounds, tmp_path / "runs" / "bald-seed42")
    assert "jal: warning" not in capfd.readouterr().err

    logged: dict[tuple[str, int], object] = {}
    for event in tensorboard_events(tmp_path / "tb" / "bald-seed42"):
        for value in event.summary.value:
            logged[value.tag, event.step] = value
    config = logged["config/text_summary", 0].tensor.string_val[0].decode()
    assert json.loads(config) == CONFIG
    assert logged["state/text_summary", 0].tensor.string_val[0] == b"finished"
    image_data = len(input_shape) in (2, 3)
    for m, pool_scores, test_scores, _ in rounds:
        step = m["num_labeled"]  # the number of labels is the x-axis
        expected = {"iteration": m["iteration"], "test/accuracy": m["test_accuracy"], "test/nll": m["test_nll"],
                    "train/loss": m["train_loss"][-1], "pool/mean_score": m["mean_pool_score"],
                    "pool/max_score": m["max_pool_score"], "round/seconds": m["seconds"]}  # fmt: skip
        assert {k: logged[k, step].simple_value for k in expected} == pytest.approx(expected)
        for tag, scores in (("pool/scores", pool_scores), ("test/scores", test_scores)):
            histogram = logged[tag, step].histo
            assert (histogram.num, histogram.min, histogram.max) == pytest.approx(
                (len(scores), scores.min(), scores.max())
            )
        acquired = m["acquired_scores"]
        assert (("acquired/scores", step) in logged) == bool(acquired)
        assert (("acquired/images", step) in logged) == (bool(acquired) and image_data)
        if acquired:
            assert logged["acquired/mean_score", step].simple_value == pytest.approx(np.mean(acquired))
            assert logged["acquired/scores", step].histo.num == len(acquired)
        if acquired and image_data:
            image = logged["acquired/images", step].image
            assert image.encoded_image_string.startswith(b"\x89PNG") and image.height >= input_shape[0]
            shown = logged["acquired/image_scores/text_summary", step].tensor.string_val[0].decode()
            assert shown == ", ".join(f"{s:.4f}" for s in acquired)


def test_round_arrays_reads_the_round_from_the_run_directory(tmp_path):
    rng = np.random.default_rng(1)
    pool_scores, test_scores = rng.uniform(size=(3, P)).astype(np.float32), rng.uniform(size=(3, T)).astype(np.float32)
    pool_indices = rng.permutation(1000)[:P].astype(np.int64)
    x_train = rng.integers(0, 256, (1000, 4, 4, 1), dtype=np.uint8)
    np.save(tmp_path / "pool_scores.npy", pool_scores)
    np.save(tmp_path / "pool_indices.npy", pool_indices)
    metrics = {"iteration": 1, "acquired": [7, 3]}
    pool, test, inputs = tracking.round_arrays(tmp_path, metrics)
    np.testing.assert_array_equal(pool, pool_scores[1])
    assert test is None and inputs is None  # a run with --skip-test-scores; no training inputs given
    np.save(tmp_path / "test_scores.npy", test_scores)
    pool, test, inputs = tracking.round_arrays(tmp_path, metrics, x_train)
    np.testing.assert_array_equal(test, test_scores[1])
    np.testing.assert_array_equal(inputs, x_train[pool_indices[[7, 3]]])  # in the order of "acquired"
    assert tracking.round_arrays(tmp_path, {"iteration": 2, "acquired": []}, x_train)[2].shape == (0, 4, 4, 1)


def test_seeds_of_one_setting_share_a_group():
    other_seed = {**CONFIG, "seed": 7, "record": {"initial_indices": [4, 5, 6]}}
    other_setting = {**CONFIG, "loop": {**CONFIG["loop"], "mc_samples": 64}}
    assert tracking.group_name(CONFIG) == tracking.group_name(other_seed)
    assert tracking.group_name(CONFIG) != tracking.group_name(other_setting)
    assert tracking.group_name(CONFIG).startswith("bald-")


def test_wandb_flag():
    assert tracking.parse_wandb("proj") == ("proj", None)
    assert tracking.parse_wandb("proj/seeds") == ("proj", "seeds")
    for bad in ("", "/g", "proj/", "a/b/c"):
        with pytest.raises(JalError, match="PROJECT or PROJECT/GROUP"):
            tracking.parse_wandb(bad)


def test_no_tracker_does_nothing(tmp_path, capfd):
    tracker = tracking.trackers_from()
    assert not tracker.active  # so the CLI reads no scores for it
    drive(tracker, synthetic_rounds(), tmp_path)
    assert capfd.readouterr() == ("", "") and not any(tmp_path.iterdir())
