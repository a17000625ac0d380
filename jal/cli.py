"""The `jal` command line: `jal run`, `filter`, `analyze`, `figures`, `report` and `plot`."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from jal import scoring
from jal.acquisition import METHODS, SAMPLINGS
from jal.errors import JalError
from jal.estimators import ESTIMATORS
from jal.loop import LoopConfig
from jal.model import CONVS
from jal.runtime import keep_freed_memory

# The reference experiment's settings that are not LoopConfig fields.
POOL_SIZE, POOL_SEED, INITIAL, ITERATIONS, SEED = 10_000, 1, 60, 100, 42
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds below 2**32
# Names from the literature for BALD under a stochastic draw (Kirsch et al., 2023).
SAMPLED_BALD = {f"{sampling}bald": sampling for sampling in SAMPLINGS[1:]}


def _int_at_least(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {maximum}")
        return value

    return parse


def _float_above(minimum: float, *, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value >= minimum if inclusive else value > minimum) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{value} must be a finite number {'>=' if inclusive else '>'} {minimum}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = _float_above(0, inclusive=True)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{value} must be below 1")
    return value


def _add_data_source(parser, default: str = "$JAL_MNIST_DIR, else downloaded once to ~/.cache/jal/mnist") -> None:
    source = parser.add_argument_group("data").add_mutually_exclusive_group()
    source.add_argument("--data-dir", help=f"folder with the four MNIST IDX files, gzipped or not (default: {default})")
    source.add_argument("--tfds-data-dir", help="read prepared TFDS 'mnist' from this TFDS data folder instead")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    defaults = LoopConfig().train
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=_int_at_least(1), default=defaults.epochs)
    training.add_argument("--batch-size", type=_int_at_least(1), default=defaults.batch_size)
    training.add_argument("--lr", type=_float_above(0, inclusive=False), default=defaults.learning_rate)
    training.add_argument("--weight-decay", type=_float_above(0, inclusive=True), default=defaults.weight_decay)
    training.add_argument("--min-samples-per-epoch", type=_int_at_least(1), default=defaults.min_samples_per_epoch)
    training.add_argument(
        "--conv",
        choices=("auto", *CONVS),
        default="auto",
        help="convolution formulation for training (auto: fastest on this backend)",
    )


def _train_config(args):
    from jal.train import train_config_from

    return train_config_from(vars(args))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line instead of argparse's usage block, and exit code 2 as argparse has it.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run an active-learning experiment (defaults: the reference MNIST BALD experiment)"
    )
    defaults = LoopConfig()
    _add_data_source(run)
    data = run.add_argument_group("pool")
    data.add_argument("--pool-size", type=_int_at_least(1), default=POOL_SIZE)
    data.add_argument(
        "--pool-seed",
        type=_int_at_least(0, MAX_SEED),
        default=POOL_SEED,
        help="seed of the pool's random subset of the training set",
    )
    loop = run.add_argument_group("loop")
    loop.add_argument("--out", required=True, help="run directory to create (must not exist or be empty)")
    loop.add_argument(
        "--acquisition",
        choices=(*METHODS, *SAMPLED_BALD),
        default=defaults.acquisition,
        help="score to acquire by; powerbald, softmaxbald and softrankbald are bald with that --sampling",
    )
    loop.add_argument("--iterations", type=_int_at_least(0), default=ITERATIONS)
    start = loop.add_mutually_exclusive_group()
    start.add_argument("--initial", type=_int_at_least(1), default=INITIAL, help="initial labels, drawn at random")
    start.add_argument(
        "--initial-per-class", type=_int_at_least(1), help="start from this many random labels of every class instead"
    )
    loop.add_argument("--acquire", type=_int_at_least(1), default=defaults.acquire, help="labels per iteration")
    loop.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=SEED)
    mc = run.add_argument_group("scoring")
    mc.add_argument("--mc-samples", type=_int_at_least(1), default=defaults.mc_samples, help="K")
    mc.add_argument("--chunk-size", type=_int_at_least(1), default=defaults.chunk_size)
    mc.add_argument("--scorer", choices=scoring.METHODS, default=defaults.scorer)
    mc.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=defaults.sampling,
        help="take the top k scores, or draw k with probability ~ score^(1/T), exp(score/T) or rank^(-1/T)",
    )
    mc.add_argument(
        "--temperature",
        type=_float_above(0, inclusive=True),
        default=defaults.temperature,
        help="T of --sampling (0: top k)",
    )
    mc.add_argument(
        "--consistent-masks",
        action="store_true",
        help="the same K dropout masks for every input in a round (always on for epig and batchbald)",
    )
    mc.add_argument(
        "--joint-samples",
        type=_int_at_least(1),
        default=defaults.joint_samples,
        help="batchbald: exact joint entropy while C^n configurations fit in this many, else this many sampled",
    )
    mc.add_argument(
        "--epig-targets",
        type=_int_at_least(1),
        default=defaults.epig_targets,
        help="epig: target inputs drawn from the pool each iteration",
    )
    mc.add_argument(
        "--skip-test-scores",
        action="store_true",
        help="do not MC-score the test set; evaluate it with one deterministic pass",
    )
    _add_training_flags(run)
    filtering = run.add_argument_group("filtering")
    filtering.add_argument(
        "--filter-fraction",
        type=_fraction,
        default=0.0,
        help="first remove this fraction of the pool: the lowest --filter-estimator scores of a model "
        "trained on the initial labels",
    )
    filtering.add_argument("--filter-estimator", choices=ESTIMATORS, default="bald")

    filter_ = commands.add_parser(
        "filter",
        help="offline data filtering: test accuracy after removing the least informative x%% of the pool, "
        "against removing x%% at random",
    )
    _add_data_source(filter_)
    filter_.add_argument("--out", required=True, help="result directory to create (must not exist or be empty)")
    filter_.add_argument("--pool-size", type=_int_at_least(1), default=POOL_SIZE)
    filter_.add_argument("--pool-seed", type=_int_at_least(0, MAX_SEED), default=POOL_SEED)
    filter_.add_argument("--initial", type=_int_at_least(1), default=INITIAL, help="the scoring model's labels")
    filter_.add_argument(
        "--held-out",
        type=_int_at_least(1),
        help="train the scoring model on this many training images outside the pool instead of on "
        "--initial pool samples",
    )
    filter_.add_argument("--estimator", choices=ESTIMATORS, default="bald")
    filter_.add_argument(
        "--fractions", type=_fraction, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9], help="fractions removed"
    )
    filter_.add_argument("--mc-samples", type=_int_at_least(1), default=defaults.mc_samples, help="K")
    filter_.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=SEED)
    _add_training_flags(filter_)

    analyze = commands.add_parser(
        "analyze", help="submodularity diagnostics of a run: score rises beyond MC noise, rank stability, filter regret"
    )
    analyze.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_source(analyze, default="the run's, else $JAL_MNIST_DIR")
    analyze.add_argument(
        "--mc-samples", type=_int_at_least(1), nargs="+", default=[32, 128], help="the K values to re-score at"
    )
    analyze.add_argument("--repeats", type=_int_at_least(2), default=2, help="re-scorings per round and K")
    analyze.add_argument("--subset", type=_int_at_least(2), default=1000, help="pool samples re-scored")
    analyze.add_argument("--every", type=_int_at_least(1), default=1, help="re-score every n-th round")
    analyze.add_argument("--z", type=_float_above(0, inclusive=False), default=2.0, help="rise threshold in noise sds")
    analyze.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="skip the siblings: models trained again on each round's labels, for the noise of training",
    )
    analyze.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=0)

    figures = commands.add_parser(
        "figures", help="the seed's figures and animations, learning curves and diagnostics of runs"
    )
    figures.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    figures.add_argument("--out", required=True, help="folder for the figures")

    report = commands.add_parser("report", help="one self-contained HTML page of runs, diagnostics and figures")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="jal run or jal filter directories")
    report.add_argument("--out", required=True, help="the .html file to write")

    plot = commands.add_parser("plot", help="plot test accuracy against labels and sorted score curves")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", required=True, help="figure file (.png, .svg or .pdf)")
    return parser


def _load_pool(args):
    """MNIST from the flags; the pool's training-set indices and labels; the loop's device arrays."""
    import jax.numpy as jnp
    import numpy as np

    from jal import data as jdata
    from jal.loop import Data

    mnist = jdata.load_mnist(args.data_dir, tfds_data_dir=args.tfds_data_dir)
    pool_indices = jdata.make_pool(len(mnist.train_images), args.pool_size, seed=args.pool_seed)
    data = Data(
        jnp.asarray(jdata.normalize(mnist.train_images[pool_indices])),
        jnp.asarray(jdata.normalize(mnist.test_images)),
        jnp.asarray(mnist.test_labels, jnp.int32),
    )
    return mnist, pool_indices, mnist.train_labels[pool_indices].astype(np.int32), data


def run_command(args) -> None:
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jal import loop
    from jal.store import RunWriter, check_run_dir

    # Everything that can fail on bad input is checked before the run directory is made.
    check_run_dir(args.out)
    mnist, pool_indices, pool_labels, data = _load_pool(args)
    if args.initial_per_class:
        initial = loop.balanced_initial_indices(pool_labels, args.initial_per_class, args.seed)
        num_initial = len(initial)
    else:
        initial, num_initial = loop.initial_indices(args.pool_size, args.initial, args.seed), args.initial
    loop.check_settings(args.pool_size, num_initial, args.acquire, args.iterations)
    acquisition, sampling = args.acquisition, args.sampling
    if acquisition in SAMPLED_BALD:
        if sampling not in ("topk", SAMPLED_BALD[acquisition]):
            raise JalError(f"--acquisition {acquisition} already sets --sampling {SAMPLED_BALD[acquisition]}")
        acquisition, sampling = "bald", SAMPLED_BALD[acquisition]

    config = loop.LoopConfig(
        acquisition=acquisition,
        acquire=args.acquire,
        mc_samples=args.mc_samples,
        chunk_size=args.chunk_size,
        scorer=args.scorer,
        score_test=not args.skip_test_scores,
        sampling=sampling,
        temperature=args.temperature,
        consistent=args.consistent_masks,
        joint_samples=args.joint_samples,
        epig_targets=args.epig_targets,
        train=_train_config(args),
    )
    loop.check_config(config)
    if args.filter_fraction > 0:
        # Offline filtering first: a model trained on the initial labels scores the pool once,
        # and the lowest-scoring fraction of the unlabeled samples leaves the pool.
        from jal.filtering import fit, kept_indices, score_all

        fit_key, score_key = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), 2**31 - 1))
        params = fit(fit_key, data.pool_images, pool_labels, initial, config.train)
        scores = score_all(score_key, params, data.pool_images, args.filter_estimator, mc_samples=args.mc_samples)
        kept = kept_indices(scores, args.filter_fraction, protected=initial)
        loop.check_settings(len(kept), num_initial, args.acquire, args.iterations)
        pool_indices, pool_labels = pool_indices[kept], pool_labels[kept]
        data = data._replace(pool_images=data.pool_images[kept])
        initial = np.searchsorted(kept, initial)  # the same samples, renumbered in the kept pool
    oracle = loop.dataset_oracle(pool_labels)
    state = loop.init(jax.random.key(args.seed), len(pool_labels), initial, oracle(initial))

    settings = {k: v for k, v in vars(args).items() if k != "command"}
    settings.update(
        conv=config.train.conv,
        score_name=config.score_name,
        loop_acquisition=config.acquisition,
        loop_sampling=config.sampling,
        consistent_masks=config.consistent_masks,
        backend=jax.default_backend(),
        initial_indices=[int(i) for i in initial],
        filtered_pool_size=len(pool_indices),
    )
    rounds = args.iterations + 1
    test_size = len(mnist.test_images) if config.score_test else 0
    writer = RunWriter(args.out, settings, pool_indices=pool_indices, rounds=rounds, test_size=test_size)
    progress = tqdm(total=rounds, desc="jal run", unit="round", file=sys.stderr)
    start = last = time.perf_counter()

    def record(info) -> None:
        nonlocal last
        now = time.perf_counter()
        metrics = writer.append(info, now - last)
        last = now
        progress.set_postfix(labels=metrics["num_labeled"], test_acc=f"{metrics['test_accuracy']:.4f}")
        progress.update()

    try:
        loop.run(state, data, config, oracle, iterations=args.iterations, callback=record)
    except KeyboardInterrupt:
        progress.close()
        raise JalError(f"interrupted; the {writer.round} finished rounds are in {writer.run_dir}") from None
    finally:
        writer.close()
    progress.close()
    print(
        f"done: {writer.round} rounds, {metrics_summary(writer.run_dir)}, {time.perf_counter() - start:.1f} s; "
        f"results in {writer.run_dir}"
    )


def metrics_summary(run_dir) -> str:
    from jal.store import read_metrics

    last = read_metrics(run_dir)[-1]
    return f"{last['num_labeled']} labels, test accuracy {last['test_accuracy']:.4f}, NLL {last['test_nll']:.4f}"


def filter_command(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jal import data as jdata
    from jal import loop
    from jal.filtering import FILTERING, filter_curve, fit, score_all
    from jal.store import CONFIG, POOL_INDICES, check_run_dir, new_directory, write_json

    check_run_dir(args.out)
    mnist, pool_indices, pool_labels, data = _load_pool(args)
    config = _train_config(args)
    fit_key, score_key, curve_key = jax.random.split(jax.random.key(args.seed), 3)
    if args.held_out:
        outside = np.setdiff1d(np.arange(len(mnist.train_images)), pool_indices)
        if args.held_out > len(outside):
            raise JalError(f"--held-out {args.held_out}: only {len(outside)} training images lie outside the pool")
        scoring_set = np.sort(np.random.RandomState(args.seed).choice(outside, args.held_out, replace=False))
        images = jnp.asarray(jdata.normalize(mnist.train_images[scoring_set]))
        labels = mnist.train_labels[scoring_set].astype(np.int32)
        params = fit(fit_key, images, labels, np.arange(len(scoring_set)), config)
        protected = np.zeros(0, int)
    else:
        if args.initial > args.pool_size:
            raise JalError(f"--initial {args.initial} must be at most the pool size {args.pool_size}")
        protected = loop.initial_indices(args.pool_size, args.initial, args.seed)
        scoring_set = pool_indices[protected]
        params = fit(fit_key, data.pool_images, pool_labels, protected, config)
    scores = score_all(score_key, params, data.pool_images, args.estimator, mc_samples=args.mc_samples)

    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    settings.update(conv=config.conv, backend=jax.default_backend(), scoring_set=[int(i) for i in scoring_set])
    with new_directory(out):
        write_json(out / CONFIG, settings)
        np.save(out / POOL_INDICES, pool_indices)
        np.save(out / "filter_scores.npy", scores)
        results = out / FILTERING
        results.touch()
    print("| removed | by | kept | test accuracy | test NLL |\n| --- | --- | --- | --- | --- |")

    def record(evaluation) -> None:
        with results.open("a") as f:
            f.write(json.dumps(evaluation._asdict()) + "\n")
        print(
            f"| {evaluation.fraction:.0%} | {evaluation.removal} | {evaluation.num_kept} "
            f"| {evaluation.test_accuracy:.4f} | {evaluation.test_nll:.4f} |",
            flush=True,
        )

    filter_curve(
        curve_key,
        data,
        pool_labels,
        scores,
        protected=protected,
        fractions=args.fractions,
        config=config,
        mc_samples=args.mc_samples,
        seed=args.seed,
        on_result=record,
    )
    print(f"results in {out}")


def analyze_command(args) -> None:

    from jal import data as jdata
    from jal.analysis import ANALYSIS, analyze, table
    from jal.store import read_config, read_pool_indices

    config = read_config(args.run_dir)
    tfds_dir = args.tfds_data_dir or (None if args.data_dir else config.get("tfds_data_dir"))
    mnist = jdata.load_mnist(args.data_dir or config.get("data_dir"), tfds_data_dir=tfds_dir)
    pool_indices = read_pool_indices(args.run_dir)
    if pool_indices.max(initial=0) >= len(mnist.train_images):
        raise JalError(f"{args.run_dir}: its pool indices exceed the {len(mnist.train_images)} training images given")
    result = analyze(
        args.run_dir,
        mnist.train_images[pool_indices],
        pool_labels=mnist.train_labels[pool_indices] if args.retrain else None,
        mc_samples=tuple(args.mc_samples),
        repeats=args.repeats,
        subset=args.subset,
        every=args.every,
        z=args.z,
        seed=args.seed,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(table(result))
    print(f"wrote {args.run_dir}/{ANALYSIS}")


def figures_command(args) -> None:
    from jal.figures import write_figures

    for path in write_figures(args.run_dirs, args.out):
        print(f"wrote {path}")


def report_command(args) -> None:
    from jal.report import build_report

    print(f"wrote {build_report(args.run_dirs, args.out)}")


def plot_command(args) -> None:
    from jal.plots import plot_runs

    print(f"wrote {plot_runs(args.run_dirs, args.out)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    try:
        commands = {
            "run": run_command,
            "filter": filter_command,
            "analyze": analyze_command,
            "figures": figures_command,
            "report": report_command,
            "plot": plot_command,
        }
        commands[args.command](args)
    except JalError as e:
        print(f"jal: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
