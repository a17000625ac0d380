"""The `jal` command line: flags in, library calls out.

`jal run` and `jal filter` turn their flags into a `jal.config.RunConfig` or
`FilterConfig` (every default lives there) and call `jal.experiment`. A flag names a
setting by its dotted path in the config; only the flags given change it, so `--config
RUN_DIR/config.json` replays a run and any further flag varies it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import warnings
from pathlib import Path

from jal.acquire.sampling import SAMPLINGS
from jal.data import DataConfig
from jal.errors import JalError

MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds below 2**32
# Names from the literature for BALD under a stochastic draw (Kirsch et al., 2023).
SAMPLED_BALD = {f"{sampling}bald": sampling for sampling in SAMPLINGS[1:]}
MODEL_FLAGS = {  # the models' own settings: flag -> setting
    "--conv": "conv",
    "--scorer": "scorer",
    "--hidden-sizes": "hidden_sizes",
    "--dropout-rate": "dropout_rate",
}
SOURCES = tuple(f"data.{field}" for field in DataConfig.SOURCES)
# A setting's Python name -> its flag, for error messages; `_setting` adds every config flag.
FLAGS: dict[str, str] = {
    "out": "--out",
    "model": "--model",
    "repeats": "--repeats",
    "subset": "--subset",
    "every": "--every",
    "mnist_dir": "--data-dir",
    "devices": "--devices",
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
    "timeout": "--distributed-timeout",
}


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


def _auto_or(parse):
    """`parse`, or the word auto: a setting resolved on the backend it runs on."""
    return lambda text: text if text == "auto" else parse(text)


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


def _fraction_up_to_one(text: str) -> float:
    value = _float_above(0, inclusive=False)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} must be at most 1")
    return value


def _fraction(text: str) -> float:
    value = _float_above(0, inclusive=True)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{value} must be below 1")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line instead of argparse's usage block, and exit code 2 as argparse has it.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _setting(group, flag: str, path: str, defaults, help: str = "", **kwargs) -> None:
    """A flag that sets the config's setting at `path`; absent, the setting keeps its (shown) default."""
    from jal.config import get

    if defaults is not None and "default_text" not in kwargs:
        default = get(defaults, path)
        default = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{help} (default: {default})" if help else f"default: {default}"
    kwargs.pop("default_text", None)
    FLAGS.setdefault(path.rsplit(".", 1)[-1], flag)
    group.add_argument(flag, dest=path, default=argparse.SUPPRESS, help=help, **kwargs)


def _add_data_flags(parser, defaults, *, pool: bool = True) -> None:
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    _setting(
        source,
        "--data",
        "data.path",
        None,
        help="a .npz file or a folder of .npy files with x_train, y_train, "
        "x_test, y_test (inputs of any shape, integer labels)",
    )
    _setting(
        source,
        "--data-dir",
        "data.mnist_dir",
        None,
        help="a folder with the four MNIST IDX files, gzipped or not (default: $JAL_MNIST_DIR, else the download "
        "cache ~/.cache/jal/mnist, else a clone's data/mnist, else a download)",
    )
    _setting(source, "--tfds", "data.tfds", None, help="a prepared TensorFlow Datasets dataset by name")
    _setting(data, "--tfds-data-dir", "data.tfds_data_dir", None, help="the TFDS data folder (alone: TFDS's mnist)")
    if defaults is None:
        return
    _setting(
        data,
        "--num-classes",
        "data.num_classes",
        None,
        type=_int_at_least(2),
        help="C (default: the largest label + 1)",
    )
    _setting(
        data,
        "--no-normalize",
        "data.normalize",
        None,
        action="store_const",
        const=False,
        help="use inputs as they are (default: standardise per channel or feature with the training split's "
        "statistics; MNIST with the reference's)",
    )
    if pool:
        _setting(
            data,
            "--pool-size",
            "data.pool_size",
            None,
            type=_int_at_least(1),
            help="pool samples, drawn from the training split (default: 10000, or all if fewer)",
        )
        _setting(
            data,
            "--pool-seed",
            "data.pool_seed",
            defaults,
            type=_int_at_least(0, MAX_SEED),
            help="seed of the pool's random subset of the training split",
        )


def _add_model_flags(parser) -> None:
    from jal.models import MODELS
    from jal.models.convs import CONVS
    from jal.models.lenet5 import SCORERS

    model = parser.add_argument_group("model")
    _setting(
        model,
        "--model",
        "model.name",
        None,
        choices=MODELS,
        help="lenet5 (28x28 grayscale, the reference), mlp (any input, flattened) or cnn (HxWxC images) "
        "(default: lenet5)",
    )
    for flag, kwargs in {
        "--conv": dict(
            choices=("auto", *CONVS),
            help="lenet5, cnn: the training convolution (default: auto, the fastest on this backend)",
        ),
        "--scorer": dict(
            choices=SCORERS,
            help="lenet5: MC scoring's form, all exact (default: factorised)",
        ),
        "--hidden-sizes": dict(type=_int_at_least(1), nargs="+", help="mlp: hidden layer widths (default: 128 128)"),
        "--dropout-rate": dict(type=_fraction, help="mlp, cnn: the dropout rate (default: 0.5)"),
    }.items():
        _setting(model, flag, f"model.settings.{MODEL_FLAGS[flag]}", None, **kwargs)


def _add_training_flags(parser, defaults, prefix: str) -> None:
    training = parser.add_argument_group("training")
    _setting(training, "--epochs", f"{prefix}epochs", defaults, type=_int_at_least(1))
    _setting(training, "--batch-size", f"{prefix}batch_size", defaults, type=_int_at_least(1))
    _setting(training, "--lr", f"{prefix}learning_rate", defaults, type=_float_above(0, inclusive=False))
    _setting(training, "--weight-decay", f"{prefix}weight_decay", defaults, type=_float_above(0, inclusive=True))
    _setting(training, "--min-samples-per-epoch", f"{prefix}min_samples_per_epoch", defaults, type=_int_at_least(1))
    _setting(
        training,
        "--gradient-groups",
        f"{prefix}groups",
        defaults,
        type=_int_at_least(1),
        help="cut each batch into this many groups spread over the devices, summed in a fixed order: "
        "the same model on any number of devices (default 1: the batch whole)",
    )


def _add_run(commands) -> None:
    from jal.acquire import ACQUISITIONS, ESTIMATORS
    from jal.config import RunConfig
    from jal.store import HISTORY_DTYPES

    defaults = RunConfig()
    run = commands.add_parser("run", help="run an active-learning experiment (defaults: the reference MNIST BALD run)")
    _add_target_flags(run, "run", "run directory")
    _add_data_flags(run, defaults)
    _add_model_flags(run)
    loop = run.add_argument_group("loop")
    _setting(
        loop,
        "--acquisition",
        "loop.acquisition",
        defaults,
        choices=(*ACQUISITIONS, *SAMPLED_BALD),
        help="score to acquire by; powerbald, softmaxbald and softrankbald are bald with that --sampling",
    )
    _setting(loop, "--iterations", "iterations", defaults, type=_int_at_least(0))
    start = loop.add_mutually_exclusive_group()
    _setting(start, "--initial", "initial", defaults, type=_int_at_least(1), help="initial labels, drawn at random")
    _setting(
        start,
        "--initial-per-class",
        "initial_per_class",
        None,
        type=_int_at_least(1),
        help="start from this many random labels of every class instead",
    )
    _setting(loop, "--acquire", "loop.acquire", defaults, type=_int_at_least(1), help="labels per iteration")
    _setting(loop, "--seed", "seed", defaults, type=_int_at_least(0, MAX_SEED))
    loop.add_argument(
        "--seeds",
        type=_seed_list,
        help="several seeds in one compiled program (vmapped), e.g. 0,1,2,3,4: OUT/seed-S for each, "
        "each the run --seed S makes alone",
    )
    mc = run.add_argument_group("scoring")
    _setting(mc, "--mc-samples", "loop.mc_samples", defaults, type=_int_at_least(1), help="K")
    _setting(
        mc,
        "--chunk-size",
        "loop.chunk_size",
        defaults,
        type=_auto_or(_int_at_least(1)),
        help="inputs scored at once; auto: 32 on CPU, 1,024 on GPU and TPU",
    )
    _setting(
        mc,
        "--sampling",
        "loop.sampling",
        defaults,
        choices=SAMPLINGS,
        help="take the top k scores, or draw k with probability ~ score^(1/T), exp(score/T) or rank^(-1/T)",
    )
    _setting(
        mc,
        "--temperature",
        "loop.temperature",
        defaults,
        type=_float_above(0, inclusive=True),
        help="T of --sampling (0: top k)",
    )
    _setting(
        mc,
        "--consistent-masks",
        "loop.consistent",
        None,
        action="store_const",
        const=True,
        help="the same K dropout masks for every input in a round (always on for epig and batchbald)",
    )
    _setting(
        mc,
        "--joint-samples",
        "loop.joint_samples",
        defaults,
        type=_int_at_least(1),
        help="batchbald: exact joint entropy while C^n configurations fit in this many, else this many sampled",
    )
    _setting(
        mc,
        "--epig-targets",
        "loop.epig_targets",
        defaults,
        type=_int_at_least(1),
        help="epig: target inputs drawn from the pool each iteration",
    )
    _setting(
        mc,
        "--skip-test-scores",
        "loop.score_test",
        None,
        action="store_const",
        const=False,
        help="do not MC-score the test set; evaluate it with one deterministic pass",
    )
    _setting(
        mc,
        "--stream",
        "stream",
        None,
        action="store_const",
        const=True,
        help="keep the pool on the host (memory-mapped from a folder of .npy files) and score it batch by batch: "
        "pools of 10^7 in under 2 GB; not for epig or batchbald",
    )
    _setting(
        mc,
        "--history-dtype",
        "history_dtype",
        defaults,
        choices=HISTORY_DTYPES,
        help="dtype of pool_scores.npy, every pool score of every round: float16 halves it on disk (about 3 "
        "significant digits; 2 GB for 10^7 inputs over 101 rounds)",
    )
    _add_training_flags(run, defaults, "loop.train.")
    filtering = run.add_argument_group("filtering")
    _setting(
        filtering,
        "--filter-fraction",
        "filter_fraction",
        defaults,
        type=_fraction,
        help="first remove this fraction of the pool: the lowest --filter-estimator scores of a model trained "
        "on the initial labels",
    )
    _setting(filtering, "--filter-estimator", "filter_estimator", defaults, choices=ESTIMATORS)
    stop = run.add_argument_group("stopping rules (default: none; the run ends after --iterations)")
    _setting(stop, "--target-accuracy", "stop.target_accuracy", None, type=_fraction_up_to_one,
             help="stop once test accuracy reaches this")  # fmt: skip
    _setting(stop, "--max-labels", "stop.max_labels", None, type=_int_at_least(1),
             help="stop once a model has trained on this many labels")  # fmt: skip
    _setting(stop, "--plateau", "stop.plateau", None, type=_int_at_least(1),
             help="stop after this many rounds without a new best test accuracy")  # fmt: skip
    _setting(stop, "--plateau-delta", "stop.plateau_delta", defaults, type=_float_above(0, inclusive=True),
             help="a new best must beat the old by more than this")  # fmt: skip
    tracking = run.add_argument_group("tracking (the run directory stays the record; a tracker that fails only warns)")
    tracking.add_argument("--wandb", metavar="PROJECT[/GROUP]", help="log every round to Weights & Biases (jal[wandb])")
    tracking.add_argument("--tensorboard", metavar="DIR", help="log every round to TensorBoard (jal[tensorboard])")
    _add_launch_flags(run)


def _add_launch_flags(parser) -> None:
    """Where a run computes: devices and processes, which do not change its results (README: Scale out)."""
    from jal.distributed import Launch

    where = parser.add_argument_group("devices and processes (the same results on any)")
    where.add_argument(
        "--devices",
        type=_int_at_least(1),
        metavar="N",
        help="use the first N devices, as many of each process's (default: every device)",
    )
    where.add_argument(
        "--distributed",
        action="store_true",
        help="join a run of several processes whose settings JAX finds: under SLURM or Open MPI, on a TPU pod "
        "slice, or from $JAX_COORDINATOR_ADDRESS with the flags below",
    )
    where.add_argument(
        "--coordinator", metavar="HOST:PORT", help="join a run of several processes through process 0 at HOST:PORT"
    )
    where.add_argument("--num-processes", type=_int_at_least(1), metavar="N", help="the run's processes")
    where.add_argument(
        "--process-id",
        type=_int_at_least(0),
        metavar="I",
        help="this process's number, 0..N-1; process 0 alone writes the run directory",
    )
    where.add_argument(
        "--distributed-timeout",
        type=_float_above(0, inclusive=False),
        default=Launch().timeout,
        metavar="SECONDS",
        help="how long to wait for every process to join (default: %(default)g)",
    )


def _add_target_flags(parser, what: str, directory: str) -> None:
    """--out, --config, --resume and --force: where a run or filter writes, and what it starts from."""
    parser.add_argument("--out", help=f"{directory} to create (must not exist or be empty)")
    parser.add_argument("--config", help=f"start from the settings of this config.json (a {what}'s); flags change them")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help=f"go on with the interrupted {what} in DIR from where it stopped, with its settings",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume: go on even where the settings given or the package versions differ from the saved",
    )


def _target(args) -> tuple[str, bool]:
    """The directory a run or filter writes, and whether it resumes it."""
    if (args.out is None) == (args.resume is None):
        raise JalError("give --out DIR for a new directory, or --resume DIR to go on with an interrupted one")
    if args.force and not args.resume:
        raise JalError("--force only applies with --resume")
    if args.resume and args.config:
        raise JalError("--resume reads the settings of the directory itself; drop --config")
    return args.out or args.resume, args.resume is not None


def _add_filter(commands) -> None:
    from jal.acquire import ESTIMATORS
    from jal.config import FilterConfig

    defaults = FilterConfig()
    filter_ = commands.add_parser(
        "filter",
        help="offline data filtering: test accuracy after removing the least informative x%% of the pool, "
        "against removing x%% at random",
    )
    _add_target_flags(filter_, "filter", "result directory")
    _add_data_flags(filter_, defaults)
    _add_model_flags(filter_)
    options = filter_.add_argument_group("filtering")
    _setting(options, "--initial", "initial", defaults, type=_int_at_least(1), help="the scoring model's labels")
    _setting(
        options,
        "--held-out",
        "held_out",
        None,
        type=_int_at_least(1),
        help="train the scoring model on this many training inputs outside the pool instead of on --initial "
        "pool samples",
    )
    _setting(options, "--estimator", "estimator", defaults, choices=ESTIMATORS)
    _setting(options, "--fractions", "fractions", defaults, type=_fraction, nargs="+", help="fractions removed")
    _setting(options, "--mc-samples", "mc_samples", defaults, type=_int_at_least(1), help="K")
    _setting(options, "--seed", "seed", defaults, type=_int_at_least(0, MAX_SEED))
    _add_training_flags(filter_, defaults, "train.")


def _add_serve(commands) -> None:
    from jal.acquire import ACQUISITIONS
    from jal.serve.config import ServeConfig

    defaults = ServeConfig()
    serve = commands.add_parser("serve", help="a labelling service in the browser: label what the model asks for")
    serve.add_argument("--out", required=True, metavar="PROJECT_DIR",
                       help="the project to open, or to make (a folder absent or empty)")  # fmt: skip
    _add_data_flags(serve, defaults)
    _add_model_flags(serve)
    loop = serve.add_argument_group("loop")
    _setting(loop, "--acquisition", "loop.acquisition", defaults, choices=(*ACQUISITIONS, *SAMPLED_BALD))
    _setting(loop, "--initial", "initial", defaults, type=_int_at_least(1),
             help="random samples to label before the first model")  # fmt: skip
    _setting(loop, "--acquire", "loop.acquire", defaults, type=_int_at_least(1), help="samples proposed per round")
    _setting(loop, "--mc-samples", "loop.mc_samples", defaults, type=_int_at_least(1), help="K")
    _setting(loop, "--seed", "seed", defaults, type=_int_at_least(0, MAX_SEED))
    _add_training_flags(serve, defaults, "loop.train.")
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    server.add_argument("--port", type=_int_at_least(0, 65535), default=8000, help="default: 8000; 0: any free port")
    server.add_argument("--token", help="the token every request must present (default: none on loopback; "
                        "elsewhere one made at start and printed with the URL)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jal", description="Bayesian active learning and data filtering with MC-dropout BALD scores.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_filter(commands)
    _add_serve(commands)

    analyze = commands.add_parser(
        "analyze", help="submodularity diagnostics of a run: score rises beyond MC noise, rank stability, filter regret"
    )
    analyze.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_flags(analyze, None)
    options = analyze.add_argument_group("diagnostics")
    options.add_argument(
        "--mc-samples", type=_int_at_least(1), nargs="+", default=[32, 128], help="the K values to re-score at"
    )
    options.add_argument("--repeats", type=_int_at_least(2), default=2, help="re-scorings per round and K")
    options.add_argument("--subset", type=_int_at_least(2), default=1000, help="pool samples re-scored")
    options.add_argument("--every", type=_int_at_least(1), default=1, help="re-score every n-th round")
    options.add_argument("--z", type=_float_above(0, inclusive=False), default=2.0, help="rise threshold in noise sds")
    options.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="skip the siblings: models trained again on each round's labels, for the noise of training",
    )
    options.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=0)

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

    compare = commands.add_parser(
        "compare", help="runs grouped by their settings but the seed: labels to reach accuracies, final accuracy "
        "with a bootstrap interval, paired tests between groups"
    )  # fmt: skip
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--at", type=_accuracies, default=(0.9, 0.95), help="accuracies to reach (default: 0.9,0.95)")
    compare.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="how to print the tables")
    compare.add_argument("--pair", nargs=2, action="append", metavar=("GROUP", "GROUP"),
                         help="test these two groups (labels as printed); default: every pair")  # fmt: skip
    compare.add_argument("--plot", metavar="FILE", help="also draw the learning curves, median and range over seeds")
    for command in commands.choices.values():
        command.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    parser.add_argument("--version", action="version", version=f"jal {_version()}")
    return parser


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("jal")
    except importlib.metadata.PackageNotFoundError:  # a clone used without installing it
        return "(not installed)"


def _seed_list(text: str) -> tuple[int, ...]:
    seeds = tuple(_int_at_least(0, MAX_SEED)(part) for part in text.split(","))
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, repeated))} repeated; give each seed once")
    return seeds


def _accuracies(text: str) -> tuple[float, ...]:
    return tuple(_fraction_up_to_one(part) for part in text.split(","))


# The devices and processes a run computes on: its results are the same on any.
WHERE = ("devices", "distributed", "coordinator", "num_processes", "process_id", "distributed_timeout")
# Flags that say where, how loudly or to whom, not what is computed.
NOT_SETTINGS = ("command", "out", "config", "resume", "force", "quiet", "wandb", "tensorboard", "seeds", *WHERE)


def _given(args) -> dict:
    """The settings the flags given set, by dotted path (the other flags are absent: argparse.SUPPRESS)."""
    return {path: value for path, value in vars(args).items() if path not in NOT_SETTINGS}


def _config(cls, args):
    """The command's config: the defaults, or --config's file, changed by the flags given."""
    from jal import store
    from jal.config import from_json, override
    from jal.models import default_settings

    source = args.config or (args.resume and f"{args.resume}/{store.CONFIG}")
    if args.resume and not Path(source).exists():
        raise JalError(f"{args.resume}: no {store.CONFIG}; it is no jal directory, or it never started (use --out)")
    if args.resume and store.is_filter_dir(args.resume) != (cls.__name__ == "FilterConfig"):
        kind, command = ("filter", "jal filter") if store.is_filter_dir(args.resume) else ("run", "jal run")
        raise JalError(f"{args.resume} is a jal {kind} directory, not a jal {args.command}'s; resume it with {command}")
    if source:
        saved = store.read_json(source, "jal config.json")
        if not isinstance(saved, dict):
            raise JalError(f"{source}: not a JSON object; pass a run's config.json")
        base = from_json(cls, {k: v for k, v in saved.items() if k not in ("record", "resumed")}, source)
    else:
        base = cls()
    changes = _given(args)
    if any(source in changes for source in SOURCES):  # a new data source replaces the saved one
        changes = {**dict.fromkeys(SOURCES), **changes}
    if "initial" in changes and hasattr(base, "initial_per_class"):  # one way to draw the initial labels
        changes["initial_per_class"] = None
    elif "initial_per_class" in changes:
        changes["initial"] = None
    if changes.get("loop.acquisition") in SAMPLED_BALD:
        sampling = SAMPLED_BALD[changes["loop.acquisition"]]
        if changes.get("loop.sampling", "topk") not in ("topk", sampling):
            raise JalError(f"--acquisition {changes['loop.acquisition']} already sets --sampling {sampling}")
        changes.update({"loop.acquisition": "bald", "loop.sampling": sampling})
    settings = {path.rsplit(".", 1)[1]: value for path, value in changes.items() if path.startswith("model.settings.")}
    changes = {path: value for path, value in changes.items() if not path.startswith("model.settings.")}
    name = changes.get("model.name", base.model.name)
    kept = base.model.settings if name == base.model.name else {}  # another model: its own defaults
    for setting in settings:
        if setting not in default_settings(name):
            flag = next(f for f, s in MODEL_FLAGS.items() if s == setting)
            takes = ", ".join(f for f, s in MODEL_FLAGS.items() if s in default_settings(name)) or "none"
            raise JalError(f"{flag} does not apply to --model {name}; it takes {takes}")
    changes["model.settings"] = {**kept, **settings}
    return override(base, changes)


def _flags(message: str) -> str:
    """A library message on one line, its Python names in backquotes as the flags that set them."""
    return re.sub(r"`(\w+)`", lambda match: FLAGS.get(match[1], match[1]), " ".join(message.split()))


class _Progress:
    """A progress bar on stderr, made at the first step: a command refused before any work prints its one line only."""

    def __init__(self, description: str, unit: str, *, quiet: bool, initial: int = 0):
        self.options = dict(desc=description, unit=unit, initial=initial, file=sys.stderr, disable=quiet)
        self.bar = None

    def step(self, text: str | None = None, total: int | None = None) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, **self.options)
        self.bar.total = total if total is not None else self.bar.total
        if text is not None:
            self.bar.set_postfix_str(text, refresh=False)
        self.bar.update()

    def write(self, line: str) -> None:
        """A line on stdout that the bar does not tear."""
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_command(args) -> None:
    import time

    from tqdm.auto import tqdm

    from jal import distributed, store, tracking
    from jal.config import RunConfig
    from jal.experiment import run

    out, resume = _target(args)
    config = _config(RunConfig, args)
    mesh = _mesh(args)
    if args.seeds is not None:
        return _run_seeds(args, config, out, resume)
    writes = distributed.is_writer()  # the other processes of a run compute alike, and write and show nothing
    quiet = args.quiet or not writes
    tracker = tracking.trackers_from(args.wandb, args.tensorboard) if writes else tracking.trackers_from()
    start = time.perf_counter()
    progress, x_train = None, None

    def on_start(rounds: int, finished: int) -> None:
        nonlocal progress, x_train
        progress = tqdm(total=rounds, initial=finished, desc="jal run", unit="round", file=sys.stderr,
                        disable=quiet)  # fmt: skip
        if finished < rounds and tracker.trackers:
            from jal.data import load_dataset

            x_train = load_dataset(config.data).x_train  # the raw inputs, to show the acquired ones
            tracker.start(store.read_config(out), out)

    def on_round(metrics) -> None:
        progress.set_postfix(labels=metrics["num_labeled"], test_acc=f"{metrics['test_accuracy']:.4f}")
        progress.update()
        if tracker.active:
            tracker.log_round(metrics, *tracking.round_arrays(out, metrics, x_train))

    state = "failed"
    try:
        run_dir = run(config, out, resume=resume, force=args.force, on_start=on_start, on_round=on_round, mesh=mesh)
        state = "finished"
    except JalError as e:
        state = "interrupted" if str(e).startswith("interrupted") else "failed"
        raise
    finally:
        if progress is not None:
            progress.close()
        if tracker.trackers:
            tracker.finish(state)
    if not quiet:
        print(f"done: {metrics_summary(run_dir)}, {time.perf_counter() - start:.1f} s; results in {run_dir}")


def _mesh(args):
    """The devices the flags ask for, after joining a run of several processes where they ask for one.

    Joining comes first: JAX must not have started before it.
    """
    from jal import distributed, sharding

    launch = distributed.Launch(args.coordinator, args.num_processes, args.process_id, args.distributed_timeout)
    joins = args.distributed or launch[:3] != (None, None, None)
    if args.seeds is not None and (joins or args.devices is not None):
        raise JalError("--seeds runs on one process and all its devices; drop --devices and the flags that join others")
    if joins:
        distributed.join(launch)
    return sharding.data_mesh(sharding.devices(args.devices))


def _run_seeds(args, config, out, resume: bool) -> None:
    """jal run --seeds: the seeds in one program, a run directory for each."""
    from tqdm.auto import tqdm

    from jal import seeds

    if resume:
        raise JalError("--seeds starts runs; resume each seed's directory alone with jal run --resume OUT/seed-S")
    if args.wandb or args.tensorboard or "seed" in _given(args):
        raise JalError("--seeds runs alone; drop --seed, --wandb and --tensorboard, or run each seed by itself")
    progress = None

    def on_start(rounds: int, finished: int) -> None:
        nonlocal progress
        progress = tqdm(total=rounds, initial=finished, desc="jal run --seeds", unit="round", file=sys.stderr,
                        disable=args.quiet)  # fmt: skip

    try:
        dirs = seeds.run(config, args.seeds, out, on_start=on_start, on_round=lambda metrics: progress.update())
    finally:
        if progress is not None:
            progress.close()
    if not args.quiet:
        for run_dir in dirs:
            print(f"{run_dir}: {metrics_summary(run_dir)}")


def metrics_summary(run_dir) -> str:
    from jal.store import read_metrics, read_status

    metrics = read_metrics(run_dir)
    last = metrics[-1]
    stopped = read_status(run_dir).get("stopped")
    return (
        f"{len(metrics)} rounds, {last['num_labeled']} labels, test accuracy {last['test_accuracy']:.4f}, "
        f"NLL {last['test_nll']:.4f}" + (f"; stopped: {stopped}" if stopped else "")
    )


def filter_command(args) -> None:
    from jal.config import FilterConfig
    from jal.experiment import filter_pool
    from jal.store import is_filter_dir, read_filtering

    out, resume = _target(args)
    config = _config(FilterConfig, args)
    header = "| removed | by | kept | test accuracy | test NLL |\n| --- | --- | --- | --- | --- |"
    total = sum(2 if fraction > 0 else 1 for fraction in config.fractions)  # random removal too, where any
    done = len(read_filtering(out)) if resume and is_filter_dir(out) else 0
    progress = _Progress("jal filter", "model", quiet=args.quiet, initial=done)

    def on_result(e) -> None:
        nonlocal header
        progress.step(total=total)
        if args.quiet:
            return
        row = f"| {e['fraction']:.0%} | {e['removal']} | {e['num_kept']} | {e['test_accuracy']:.4f} "
        progress.write(f"{header}\n" * bool(header) + f"{row}| {e['test_nll']:.4f} |")
        header = ""

    try:
        out = filter_pool(config, out, resume=resume, force=args.force, on_result=on_result)
    finally:
        progress.close()
    if not args.quiet:
        print(f"results in {out}")


def analyze_command(args) -> None:
    from jal import store
    from jal.experiment import analyze_run
    from jal.report import table

    # Checked before the data loads and any model trains, which take long.
    store.check_run_dir(args.run_dir)
    if not os.access(args.run_dir, os.W_OK):
        raise JalError(f"{args.run_dir}: cannot write {store.ANALYSIS} into it; make the folder writable")
    sources = {path.split(".", 1)[1]: value for path, value in vars(args).items() if path in SOURCES}
    bar = _Progress("jal analyze", "step", quiet=args.quiet)
    try:
        result = analyze_run(
            args.run_dir,
            sources=sources,
            retrain=args.retrain,
            mc_samples=tuple(args.mc_samples),
            repeats=args.repeats,
            subset=args.subset,
            every=args.every,
            z=args.z,
            seed=args.seed,
            progress=bar.step,
        )
    except OSError as e:  # writing analysis.json (whole or not at all): a full disk, say
        raise JalError(f"{args.run_dir}: cannot write {store.ANALYSIS} ({e}); free some space") from e
    finally:
        bar.close()
    if not args.quiet:
        print(table(result))
        print(f"wrote {args.run_dir}/{store.ANALYSIS}")


def figures_command(args) -> None:
    from jal.figures import write_figures

    bar = _Progress("jal figures", "figure", quiet=args.quiet)
    try:
        paths = write_figures(args.run_dirs, args.out, progress=bar.step)
    finally:
        bar.close()
    for path in paths if not args.quiet else ():
        print(f"wrote {path}")


def report_command(args) -> None:
    from jal.report import build_report

    path = build_report(args.run_dirs, args.out)
    if not args.quiet:
        print(f"wrote {path}")


def plot_command(args) -> None:
    from jal.figures import plot_runs

    path = plot_runs(args.run_dirs, args.out)
    if not args.quiet:
        print(f"wrote {path}")


def compare_command(args) -> None:
    from jal import compare

    comparison = compare.compare(compare.load_runs(args.run_dirs), at=args.at, pairs=args.pair)
    if args.plot:
        compare.plot(comparison, args.plot)  # first: a figure that cannot be written stops before any output
    if args.format == "csv":
        print(compare.csv(comparison), compare.csv(comparison, "tests"), sep="\n")
    else:
        print(compare.markdown(comparison))
    if args.plot and not args.quiet:
        print(f"wrote {args.plot}", file=sys.stderr)


def serve_command(args) -> None:
    from jal.serve import serve
    from jal.serve.config import ServeConfig
    from jal.serve.project import saved_config

    # A project reopens with its own settings; flags given must agree with them (checked on opening).
    server = ("host", "port", "token")
    settings = {**{k: v for k, v in vars(args).items() if k not in server}, "config": saved_config(args.out)}
    config = _config(ServeConfig, argparse.Namespace(**settings, resume=None))
    serve(config, args.out, host=args.host, port=args.port, token=args.token, quiet=args.quiet)


COMMANDS = {
    "run": run_command,
    "filter": filter_command,
    "analyze": analyze_command,
    "figures": figures_command,
    "report": report_command,
    "plot": plot_command,
    "compare": compare_command,
    "serve": serve_command,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from jal.runtime import keep_freed_memory

    keep_freed_memory()
    warnings.formatwarning = lambda message, *args, **kwargs: f"jal: warning: {_flags(str(message))}\n"
    # A scheduler's pre-emption (SIGTERM) stops a command as Ctrl-C does: what finished is kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        COMMANDS[args.command](args)
    except JalError as e:
        print(f"jal: error: {_flags(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jal: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from jal.resources import out_of_memory

        error = out_of_memory(e)  # an allocation numpy or XLA refused: one line, like any bad setting
        if error is None:
            raise
        print(f"jal: error: {_flags(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
