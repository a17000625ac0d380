"""A catalogue of bad inputs, as a new user would try them, across every command and the Python API.

Each case asserts the exit code (2; a JalError in Python), a single line naming the
problem, and that nothing was written or changed anywhere under the case's folder.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jal import experiment, store, workdir
from jal.cli import main
from jal.config import FilterConfig, ModelSpec, RunConfig
from jal.data import DataConfig, load_dataset
from jal.errors import JalError
from jal.loop import LoopConfig
from jal.train import TrainConfig
from tests.conftest import synthetic_mnist, write_idx_dir

pytestmark = pytest.mark.slow
SMALL = ["--pool-size", "200", "--model", "mlp", "--hidden-sizes", "16", "--initial", "10", "--iterations", "1",
         "--mc-samples", "4"]  # fmt: skip


def digits_arrays():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return {"x_train": x[:1400].astype(np.float32), "y_train": y[:1400], "x_test": x[1400:].astype(np.float32),
            "y_test": y[1400:]}  # fmt: skip


def npz(path: Path, **changes) -> Path:
    arrays = {**digits_arrays(), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Valid and broken inputs side by side: data files, a finished run, a filter, damaged copies."""
    root = tmp_path_factory.mktemp("world")
    good = npz(root / "digits.npz")
    arrays = digits_arrays()
    npz(root / "no_y_test.npz", y_test=None)
    npz(root / "float_labels.npz", y_train=arrays["y_train"] + 0.5)
    npz(root / "negative_labels.npz", y_train=arrays["y_train"] - 1)
    npz(root / "nan_inputs.npz", x_train=np.where(np.arange(64) == 3, np.nan, arrays["x_train"]).astype(np.float32))
    npz(root / "inf_inputs.npz", x_test=np.full_like(arrays["x_test"], np.inf))
    npz(root / "shapes_disagree.npz", x_test=arrays["x_test"][:, :32])
    npz(root / "empty_test.npz", x_test=arrays["x_test"][:0], y_test=arrays["y_test"][:0])
    npz(root / "labels_short.npz", y_train=arrays["y_train"][:10])
    np.savez(root / "pickled.npz", x_train=np.array([{"a": 1}] * 5, dtype=object), **{
        k: v for k, v in arrays.items() if k != "x_train"})  # fmt: skip
    (root / "text.npz").write_text("these are not arrays\n")
    (root / "truncated.npz").write_bytes(good.read_bytes()[:3000])
    (root / "empty.npz").write_bytes(b"")
    npy = root / "npy_folder"
    npy.mkdir()
    for key, value in arrays.items():
        np.save(npy / f"{key}.npy", value)
    broken_npy = root / "npy_broken"
    shutil.copytree(npy, broken_npy)
    (broken_npy / "x_train.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (root / "empty_folder").mkdir()
    write_idx_dir(root / "mnist", synthetic_mnist(300, 100))
    bad_idx = write_idx_dir(root / "mnist_bad_magic", synthetic_mnist(300, 100))
    with gzip.open(bad_idx / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x09\x99" + b"\x00" * 8)
    truncated_idx = write_idx_dir(root / "mnist_truncated", synthetic_mnist(300, 100))
    data = (truncated_idx / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated_idx / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    (root / "a_file").write_text("not a folder\n")
    (root / "occupied").mkdir()
    (root / "occupied" / "notes.txt").write_text("precious\n")

    config = RunConfig(
        data=DataConfig(path=str(good), pool_size=200),
        model=ModelSpec("mlp", {"hidden_sizes": (16,)}),
        loop=LoopConfig(mc_samples=4, train=TrainConfig(min_samples_per_epoch=200)),
        initial=10,
        iterations=1,
    )
    experiment.run(config, root / "run")
    filter_config = FilterConfig(
        data=config.data, model=config.model, train=config.loop.train, initial=10, fractions=(0.0, 0.5), mc_samples=4
    )
    experiment.filter_pool(filter_config, root / "filter")
    damage(root)
    return root


def damage(root: Path) -> None:
    """Copies of the run, each broken in one way."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(root / "run", root / name))

    (copy("run_no_config") / store.CONFIG).unlink()
    (copy("run_config_not_json") / store.CONFIG).write_text("{ not json")
    (copy("run_config_list") / store.CONFIG).write_text("[1, 2, 3]")
    config = json.loads((root / "run" / store.CONFIG).read_text())
    (copy("run_no_record") / store.CONFIG).write_text(json.dumps({k: v for k, v in config.items() if k != "record"}))
    (copy("run_metrics_garbage") / store.METRICS).write_text("garbage\n{}\n")
    (copy("run_metrics_empty") / store.METRICS).write_text("")
    (copy("run_metrics_missing_key") / store.METRICS).write_text(json.dumps({"iteration": 0}) + "\n")
    (copy("run_metrics_wrong_type") / store.METRICS).write_text(
        "\n".join(json.dumps({**m, "num_labeled": "ten"}) for m in store.read_metrics(root / "run")) + "\n"
    )
    (copy("run_scores_missing") / store.POOL_SCORES).unlink()
    cut = copy("run_cut_no_scores")  # interrupted after its first round, then its scores lost
    (cut / store.METRICS).write_text((cut / store.METRICS).read_text().splitlines(keepends=True)[0])
    (cut / store.POOL_SCORES).unlink()
    scores = root / "run" / store.POOL_SCORES
    (copy("run_scores_truncated") / store.POOL_SCORES).write_bytes(scores.read_bytes()[:200])
    np.save(copy("run_scores_wrong_shape") / store.POOL_SCORES, np.zeros((2, 7), np.float32))
    np.save(copy("run_scores_wrong_dtype") / store.POOL_SCORES, np.zeros((2, 200), np.complex64))
    np.save(copy("run_scores_all_nan") / store.POOL_SCORES, np.full((2, 200), np.nan, np.float32))
    np.save(copy("run_indices_pickled") / store.POOL_INDICES, np.array([{}], dtype=object), allow_pickle=True)
    (copy("run_analysis_garbage") / store.ANALYSIS).write_text('{"rounds": 3}')
    other = root / "other_program"
    other.mkdir()
    (other / store.CONFIG).write_text(json.dumps({"name": "another tool", "version": 3}))
    (other / store.METRICS).write_text(json.dumps({"loss": 0.1}) + "\n")


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under `root`, with the md5 of each file."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


# (id, argv with {w} for the world folder, what the message must say)
CLI_CASES = [
    # jal run: data
    ("run-data-missing", "run --data {w}/absent.npz --out {w}/new", r"absent\.npz"),
    ("run-data-empty-folder", "run --data {w}/empty_folder --out {w}/new", r"empty_folder"),
    ("run-data-text", "run --data {w}/text.npz --out {w}/new", r"text\.npz"),
    ("run-data-truncated", "run --data {w}/truncated.npz --out {w}/new", r"truncated\.npz"),
    ("run-data-empty-file", "run --data {w}/empty.npz --out {w}/new", r"empty\.npz"),
    ("run-data-no-key", "run --data {w}/no_y_test.npz --out {w}/new", r"y_test"),
    ("run-data-float-labels", "run --data {w}/float_labels.npz --out {w}/new", r"y_train"),
    ("run-data-negative-labels", "run --data {w}/negative_labels.npz --out {w}/new", r"y_train"),
    ("run-data-nan", "run --data {w}/nan_inputs.npz --out {w}/new", r"x_train.*(NaN|finite)"),
    ("run-data-inf", "run --data {w}/inf_inputs.npz --out {w}/new", r"x_test.*(inf|finite)"),
    ("run-data-shapes", "run --data {w}/shapes_disagree.npz --out {w}/new", r"shape"),
    ("run-data-empty-split", "run --data {w}/empty_test.npz --out {w}/new", r"empty|no "),
    ("run-data-labels-short", "run --data {w}/labels_short.npz --out {w}/new", r"y_train"),
    ("run-data-pickled", "run --data {w}/pickled.npz --out {w}/new", r"pickle|object"),
    ("run-data-npy-broken", "run --data {w}/npy_broken --out {w}/new", r"x_train\.npy"),
    ("run-mnist-missing", "run --data-dir {w}/empty_folder --out {w}/new", r"empty_folder"),
    ("run-mnist-bad-magic", "run --data-dir {w}/mnist_bad_magic --out {w}/new", r"t10k-labels"),
    ("run-mnist-truncated", "run --data-dir {w}/mnist_truncated --out {w}/new", r"train-images"),
    (
        "run-tfds-absent",
        "run --tfds no_such_dataset --tfds-data-dir {w}/empty_folder --out {w}/new",
        r"no_such_dataset",
    ),
    ("run-num-classes-low", "run --data {w}/digits.npz --num-classes 3 --out {w}/new", r"--num-classes|label"),
    # jal run: settings
    ("run-pool-too-large", "run --data {w}/digits.npz --pool-size 99999 --out {w}/new", r"--pool-size"),
    ("run-pool-zero", "run --data {w}/digits.npz --pool-size 0 --out {w}/new", r"--pool-size"),
    (
        "run-initial-too-large",
        "run --data {w}/digits.npz --pool-size 50 --initial 60 --model mlp --out {w}/new",
        r"--initial",
    ),
    (
        "run-schedule-too-long",
        "run --data {w}/digits.npz --pool-size 50 --initial 10 --iterations 100 --model mlp --out {w}/new",
        r"exceed the pool",
    ),  # fmt: skip
    (
        "run-per-class-too-large",
        "run --data {w}/digits.npz --pool-size 50 --initial-per-class 40 --model mlp --out {w}/new",
        r"--initial-per-class",
    ),  # fmt: skip
    ("run-k-zero", "run --data {w}/digits.npz --mc-samples 0 --out {w}/new", r"--mc-samples"),
    ("run-k-one-bald", "run --data {w}/digits.npz {small} --mc-samples 1 --out {w}/new", r"--mc-samples.*bald"),
    (
        "run-k-one-batchbald",
        "run --data {w}/digits.npz {small} --mc-samples 1 --acquisition batchbald --out {w}/new",
        r"--mc-samples",
    ),  # fmt: skip
    (
        "run-chunk-huge",
        "run --data {w}/digits.npz {small} --chunk-size 1000000000 --out {w}/new",
        r"--chunk-size needs .* GiB",
    ),  # fmt: skip
    (
        "run-batch-huge",
        "run --data {w}/digits.npz {small} --batch-size 100000000000 --out {w}/new",
        r"--batch-size needs .* GiB",
    ),  # fmt: skip
    (
        "run-epig-huge",
        "run --data {w}/digits.npz {small} --acquisition epig --epig-targets 1000000000 --out {w}/new",
        r"--epig-targets needs .* GiB",
    ),  # fmt: skip
    (
        "run-joint-huge",
        "run --data {w}/digits.npz {small} --acquisition batchbald --joint-samples 100000000000 --out {w}/new",
        r"--joint-samples needs .* GiB",
    ),  # fmt: skip
    ("run-lr-negative", "run --data {w}/digits.npz --lr -1 --out {w}/new", r"--lr"),
    ("run-lr-nan", "run --data {w}/digits.npz --lr nan --out {w}/new", r"--lr"),
    ("run-temperature-negative", "run --data {w}/digits.npz --temperature -1 --out {w}/new", r"--temperature"),
    ("run-seed-negative", "run --data {w}/digits.npz --seed -1 --out {w}/new", r"--seed"),
    ("run-seed-huge", "run --data {w}/digits.npz --seed 99999999999 --out {w}/new", r"--seed"),
    ("run-acquisition-unknown", "run --data {w}/digits.npz --acquisition nope --out {w}/new", r"--acquisition"),
    ("run-model-unknown", "run --data {w}/digits.npz --model nope --out {w}/new", r"--model"),
    ("run-hidden-zero", "run --data {w}/digits.npz --model mlp --hidden-sizes 0 --out {w}/new", r"--hidden-sizes"),
    ("run-dropout-high", "run --data {w}/digits.npz --model mlp --dropout-rate 1.5 --out {w}/new", r"--dropout-rate"),
    ("run-conv-for-mlp", "run --data {w}/digits.npz --model mlp --conv native --out {w}/new", r"--conv"),
    ("run-lenet-on-vectors", "run --data {w}/digits.npz --model lenet5 --out {w}/new", r"lenet5|shape"),
    ("run-cnn-on-vectors", "run --data {w}/digits.npz --model cnn --out {w}/new", r"cnn|shape"),
    (
        "run-sampling-batchbald",
        "run --data {w}/digits.npz --acquisition batchbald --sampling power --model mlp --out {w}/new",
        r"--sampling",
    ),  # fmt: skip
    (
        "run-powerbald-softmax",
        "run --data {w}/digits.npz --acquisition powerbald --sampling softmax --model mlp --out {w}/new",
        r"--sampling",
    ),  # fmt: skip
    ("run-filter-fraction-one", "run --data {w}/digits.npz --filter-fraction 1 --out {w}/new", r"--filter-fraction"),
    ("run-iterations-text", "run --data {w}/digits.npz --iterations ten --out {w}/new", r"--iterations"),
    ("run-flag-unknown", "run --data {w}/digits.npz --speed 11 --out {w}/new", r"--speed"),
    # jal run: where it writes, and what it resumes
    ("run-out-occupied", "run --data {w}/digits.npz --out {w}/occupied", r"occupied.*not an empty folder"),
    ("run-out-a-file", "run --data {w}/digits.npz --out {w}/a_file", r"a_file.*not a folder"),
    ("run-out-under-a-file", "run --data {w}/digits.npz --out {w}/a_file/sub", r"a_file"),
    ("run-out-too-long", "run --data {w}/digits.npz --out {w}/" + "x" * 300, r"xxxx"),
    ("run-out-missing", "run --data {w}/digits.npz", r"--out"),
    ("run-out-and-resume", "run --out {w}/new --resume {w}/run", r"--resume"),
    ("run-force-alone", "run --data {w}/digits.npz --out {w}/new --force", r"--force"),
    ("run-resume-and-config", "run --resume {w}/run --config {w}/run/config.json", r"--config"),
    ("run-resume-absent", "run --resume {w}/absent", r"absent"),
    ("run-resume-not-a-run", "run --resume {w}/empty_folder", r"empty_folder"),
    ("run-resume-a-filter", "run --resume {w}/filter", r"filter"),
    ("run-resume-other-seed", "run --resume {w}/run --seed 5", r"is finished.*--config"),
    ("run-resume-cut-other-seed", "run --resume {w}/run_cut_no_scores --seed 5", r"--seed.*--force"),
    ("run-resume-corrupt-config", "run --resume {w}/run_config_not_json", r"config\.json"),
    ("run-resume-no-scores", "run --resume {w}/run_cut_no_scores", r"pool_scores\.npy"),
    ("run-config-missing", "run --config {w}/absent.json --out {w}/new", r"absent\.json"),
    ("run-config-not-json", "run --config {w}/run_config_not_json/config.json --out {w}/new", r"config\.json"),
    ("run-config-list", "run --config {w}/run_config_list/config.json --out {w}/new", r"not a JSON object"),
    ("run-config-other-program", "run --config {w}/other_program/config.json --out {w}/new", r"unknown setting"),
    # jal filter
    ("filter-fraction-high", "filter --data {w}/digits.npz --fractions 0.5 1.5 --out {w}/new", r"--fractions"),
    (
        "filter-held-out-too-many",
        "filter --data {w}/digits.npz --pool-size 1400 --held-out 10 --model mlp --out {w}/new",
        r"--held-out",
    ),  # fmt: skip
    (
        "filter-initial-too-large",
        "filter --data {w}/digits.npz --pool-size 50 --initial 60 --model mlp --out {w}/new",
        r"--initial",
    ),  # fmt: skip
    ("filter-k-one", "filter --data {w}/digits.npz --model mlp --mc-samples 1 --out {w}/new", r"--mc-samples"),
    ("filter-estimator-unknown", "filter --data {w}/digits.npz --estimator nope --out {w}/new", r"--estimator"),
    ("filter-out-occupied", "filter --data {w}/digits.npz --out {w}/occupied", r"not an empty folder"),
    ("filter-resume-a-run", "filter --resume {w}/run", r"is a jal run directory.*jal run"),
    ("filter-data-missing", "filter --data {w}/absent.npz --out {w}/new", r"absent\.npz"),
    # jal analyze
    ("analyze-absent", "analyze {w}/absent", r"absent"),
    ("analyze-not-a-run", "analyze {w}/empty_folder", r"empty_folder"),
    ("analyze-a-filter", "analyze {w}/filter", r"filter"),
    ("analyze-config-garbage", "analyze {w}/run_config_not_json", r"config\.json"),
    ("analyze-no-record", "analyze {w}/run_no_record", r"config\.json"),
    ("analyze-metrics-garbage", "analyze {w}/run_metrics_garbage", r"metrics\.jsonl"),
    ("analyze-data-moved", "analyze {w}/run --data {w}/absent.npz", r"absent\.npz"),
    ("analyze-subset-one", "analyze {w}/run --subset 1", r"--subset"),
    ("analyze-k-zero", "analyze {w}/run --mc-samples 0", r"--mc-samples"),
    ("analyze-other-program", "analyze {w}/other_program", r"other_program"),
    # jal plot
    ("plot-absent", "plot {w}/absent --out {w}/plot.png", r"absent"),
    ("plot-other-program", "plot {w}/other_program --out {w}/plot.png", r"other_program"),
    ("plot-no-config", "plot {w}/run_no_config --out {w}/plot.png", r"config\.json"),
    ("plot-metrics-empty", "plot {w}/run_metrics_empty --out {w}/plot.png", r"run_metrics_empty"),
    ("plot-metrics-missing-key", "plot {w}/run_metrics_missing_key --out {w}/plot.png", r"metrics\.jsonl"),
    ("plot-metrics-wrong-type", "plot {w}/run_metrics_wrong_type --out {w}/plot.png", r"metrics\.jsonl"),
    ("plot-scores-truncated", "plot {w}/run_scores_truncated --out {w}/plot.png", r"pool_scores\.npy"),
    ("plot-scores-wrong-shape", "plot {w}/run_scores_wrong_shape --out {w}/plot.png", r"pool_scores\.npy"),
    ("plot-scores-wrong-dtype", "plot {w}/run_scores_wrong_dtype --out {w}/plot.png", r"pool_scores\.npy"),
    ("plot-scores-all-nan", "plot {w}/run_scores_all_nan --out {w}/plot.png", r"pool_scores\.npy"),
    ("plot-indices-pickled", "plot {w}/run_indices_pickled --out {w}/plot.png", r"pool_indices\.npy"),
    ("plot-out-extension", "plot {w}/run --out {w}/plot.xyz", r"plot\.xyz"),
    ("plot-out-under-a-file", "plot {w}/run --out {w}/a_file/plot.png", r"a_file"),
    ("plot-one-good-one-bad", "plot {w}/run {w}/run_scores_wrong_shape --out {w}/plot.png", r"pool_scores\.npy"),
    # jal figures
    ("figures-not-a-run", "figures {w}/empty_folder --out {w}/figs", r"empty_folder"),
    ("figures-out-a-file", "figures {w}/run --out {w}/a_file", r"a_file"),
    ("figures-scores-truncated", "figures {w}/run_scores_truncated --out {w}/figs", r"pool_scores\.npy"),
    ("figures-analysis-garbage", "figures {w}/run_analysis_garbage --out {w}/figs", r"analysis\.json"),
    # jal report
    ("report-not-a-run", "report {w}/empty_folder --out {w}/report.html", r"empty_folder"),
    ("report-out-under-a-file", "report {w}/run --out {w}/a_file/report.html", r"a_file"),
    ("report-analysis-garbage", "report {w}/run_analysis_garbage --out {w}/report.html", r"analysis\.json"),
    ("report-metrics-garbage", "report {w}/run_metrics_garbage --out {w}/report.html", r"metrics\.jsonl"),
]


@pytest.mark.parametrize("argv, message", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_the_command_line_refuses_with_one_line_and_writes_nothing(world, capsys, argv, message):
    before = tree(world)
    args = argv.format(w=world, small=" ".join(SMALL)).split()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("jal"), err
    assert re.search(message, lines[0]), lines[0]
    assert tree(world) == before


def test_a_locked_run_is_refused_at_once(world, capsys):
    before = tree(world)
    with workdir.lock(world / "run"):
        assert main(["run", "--resume", str(world / "run")]) == 2
        assert main(["analyze", str(world / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("is writing it" in line for line in lines)
    assert tree(world) == before


def model_and_params():
    from jal.models import build_model

    model = build_model("mlp", (64,), 10, hidden_sizes=(8,))
    return model, model.init(jax.random.key(0))


def score_pool(**changes):
    from jal.scoring import score_pool as score

    model, params = model_and_params()
    arguments = {"key": jax.random.key(1), "mc_samples": 4, "chunk_size": 8, **changes}
    inputs = arguments.pop("inputs", np.zeros((20, 64), np.float32))
    return score(model, params, inputs, **arguments)


def mc_log_probs(**changes):
    from jal.scoring import mc_log_probs as mc

    model, params = model_and_params()
    arguments = {"key": jax.random.key(1), "mc_samples": 4, "chunk_size": 8, **changes}
    inputs = arguments.pop("inputs", jnp.zeros((20, 64)))
    return mc(model, params, inputs, **arguments)


def learner(**changes):
    from jal.learner import ActiveLearner

    model, _ = model_and_params()
    arguments = {"pool_inputs": np.zeros((30, 64), np.float32), "test_inputs": np.zeros((5, 64), np.float32),
                 "test_labels": np.zeros(5, int), "initial_indices": [0, 1], "initial_labels": [0, 1]}  # fmt: skip
    arguments.update(changes)
    return ActiveLearner(model, **arguments)


def loop_init(**changes):
    from jal import loop

    arguments = {"key": jax.random.key(0), "pool_size": 10, "initial_indices": [0], "initial_labels": [1], **changes}
    return loop.init(**arguments)


def run_config(world, **changes):
    config = RunConfig(
        data=DataConfig(path=str(world / "digits.npz"), pool_size=100),
        model=ModelSpec("mlp"),
        initial=10,
        iterations=1,
    )
    return experiment.run(dataclasses.replace(config, **changes), world / "new")


API_CASES = [
    ("score-k-zero", lambda w: score_pool(mc_samples=0), r"`mc_samples`"),
    ("score-k-one-bald", lambda w: score_pool(mc_samples=1, estimator="bald"), r"`mc_samples`"),
    ("score-chunk-zero", lambda w: score_pool(chunk_size=0), r"`chunk_size`"),
    ("score-batch-negative", lambda w: score_pool(batch_size=-5), r"`batch_size`"),
    ("score-key-int", lambda w: score_pool(key=3), r"`key`"),
    ("score-key-floats", lambda w: score_pool(key=np.zeros(2, np.float32)), r"`key`"),
    ("score-nan", lambda w: score_pool(inputs=np.full((20, 64), np.nan, np.float32)), r"(NaN|finite)"),
    ("score-strings", lambda w: score_pool(inputs=np.array([["a"] * 64] * 3)), r"`inputs`"),
    ("score-wrong-shape", lambda w: score_pool(inputs=np.zeros((20, 63), np.float32)), r"shape"),
    ("score-estimator-unknown", lambda w: score_pool(estimator="nope"), r"nope"),
    ("mc-k-zero", lambda w: mc_log_probs(mc_samples=0), r"`mc_samples`"),
    ("mc-chunk-negative", lambda w: mc_log_probs(chunk_size=-1), r"`chunk_size`"),
    ("mc-inf", lambda w: mc_log_probs(inputs=jnp.full((20, 64), jnp.inf)), r"(inf|finite)"),
    ("mc-key-list", lambda w: mc_log_probs(key=[1, 2]), r"`key`"),
    ("learner-pool-strings", lambda w: learner(pool_inputs=np.array([["x"] * 64] * 30)), r"pool"),
    ("learner-pool-nan", lambda w: learner(pool_inputs=np.full((30, 64), np.nan, np.float32)), r"(NaN|finite)"),
    ("learner-index-outside", lambda w: learner(initial_indices=[0, 99]), r"0\.\.29|pool"),
    ("learner-label-negative", lambda w: learner(initial_labels=[0, -1]), r"label"),
    ("init-index-repeated", lambda w: loop_init(initial_indices=[0, 0], initial_labels=[1, 1]), r"once"),
    ("init-label-too-large", lambda w: loop_init(initial_labels=[12], num_classes=10), r"label"),
    ("run-iterations-negative", lambda w: run_config(w, iterations=-1), r"`iterations`"),
    ("run-initial-and-per-class", lambda w: run_config(w, initial_per_class=2), r"`initial`"),
    ("run-loop-k-zero", lambda w: run_config(w, loop=LoopConfig(mc_samples=0)), r"`mc_samples`"),
    ("read-model-round", lambda w: store.read_model(w / "run", 7, {"w": jnp.zeros(3)}), r"models\.npy"),
    ("load-missing", lambda w: load_dataset(DataConfig(path=str(w / "no.npz"))), r"no\.npz"),
    (
        "filter-bad-fraction",
        lambda w: experiment.filter_pool(
            FilterConfig(data=DataConfig(path=str(w / "digits.npz")), model=ModelSpec("mlp"), fractions=(2.0,)),
            w / "new",
        ),
        r"fraction",
    ),  # fmt: skip
]


@pytest.mark.parametrize("call, message", [case[1:] for case in API_CASES], ids=[case[0] for case in API_CASES])
def test_the_python_api_refuses_with_one_line_and_writes_nothing(world, call, message):
    before = tree(world)
    with pytest.raises(JalError) as refused:
        call(world)
    assert "\n" not in str(refused.value)
    assert re.search(message, str(refused.value)), str(refused.value)
    assert tree(world) == before
