"""`jal compare`: runs grouped into experiments (the same settings but for the seed), summarised and tested in pairs.

    from jal import compare

    runs = compare.load_runs(["runs/bald-seed1", "runs/bald-seed2", "runs/random-seed1", "runs/random-seed2"])
    comparison = compare.compare(runs, at=(0.9, 0.95), pairs=[("bald", "random")])
    print(compare.markdown(comparison))          # or compare.csv(comparison), compare.csv(comparison, "tests")
    compare.plot(comparison, "bald_vs_random.png")  # .png, .svg or .pdf

* `load_runs(run_dirs) -> list[Run]`: each run's settings, seed, data and learning curve (label
  counts and test accuracy), read from its config.json and metrics.jsonl. Anything else (a
  missing directory, a `jal filter` directory, a run without a finished round) is refused
  with a one-line JalError.
* `group(runs) -> {label: [Run, ...]}`: runs with the same settings but for the seed form one
  experiment; what does not tell experiments apart is left out (`PER_RUN`: the seed, where
  the data lie, "resumed", whether the pool was streamed and the dtype its score history
  was kept in; and the "record" of what the settings resolved to). A group is
  labelled by its acquisition and the other settings that differ between the groups, e.g.
  "bald (filter_fraction=0.5)". `jal figures` groups its learning curves the same way.
* `compare(runs, at=(0.9, 0.95), pairs=None) -> Comparison`: per group (`Group`), the labels
  each run needed to reach each accuracy in `at` and the final accuracy; a paired test
  (`PairedTest`) for each pair of group labels in `pairs` (None: every pair of groups). All
  runs must have been run on the same data.
* `markdown(comparison)`, `csv(comparison, table="groups" or "tests")`: the tables as text.
* `plot(comparison, path)`: learning curves, the median over seeds with a band (min to max,
  or the interquartile range), written whole or not at all.

What the numbers are:

* A group's runs are cut to the label counts all of them reached, so that every seed
  counts at the same labels (an interrupted run shortens its group).
* Labels to reach an accuracy: per run, the first label count whose test accuracy is at
  least the target; the median and range over seeds, and how many runs never reached it. A
  run that never did counts as +inf in the median, shown as ">N" (N: the last label count).
* Final accuracy: the mean over seeds, with a 95% percentile bootstrap interval (10,000
  resamples of the seeds, from a fixed seed, so the same runs give the same interval). With
  few seeds it is narrower than a 95% interval should be: it covers the true mean about 85%
  of the time with 5 seeds, 90% with 10.
* Paired test: runs paired by seed (only seeds present in both groups count), the
  differences of their final accuracy and of the area under their learning curves (the mean
  test accuracy over the label counts both groups have). Two-sided sign-flip permutation
  test of the mean difference: exact (all 2^n sign assignments) for n <= 20 pairs, 100,000
  random assignments above. The smallest p-value n pairs can give is 2/2^n (0.0625 for 5).

It reads run directories through `jal.store` alone (numpy, and matplotlib to draw): no jax.
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import functools
import io
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from jal import outputs, store
from jal.errors import JalError

TARGETS = (0.90, 0.95)
RESAMPLES = 10_000
EXACT_PAIRS = 20  # up to this many pairs the test enumerates all 2^n sign assignments (2^20 sums: 8 MB)
RANDOM_FLIPS = 100_000
SEED = 0  # of the bootstrap and the random sign flips: the same runs give the same numbers
ACQUISITION = "loop.acquisition"
# Settings that differ between repetitions of one experiment, or say where its data lie.
PER_RUN = {"seed", "resumed", "data.path", "data.mnist_dir", "data.tfds_data_dir", "stream", "history_dtype"}
BANDS = {"range": "min to max", "iqr": "interquartile range"}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
TABLES = ("groups", "tests")


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One run directory: its settings but for the seed, its seed and data, and its learning curve."""

    path: Path
    settings: dict  # flat_settings of its config.json, less PER_RUN
    seed: int
    data: str  # what its data hold (`_data`): runs compared must share it
    data_name: str  # a short name for messages, e.g. "arrays digits.npz"
    labels: np.ndarray  # int [R]: the label count at each finished round
    accuracy: np.ndarray  # float [R]: the test accuracy at each finished round


@dataclasses.dataclass(frozen=True)
class Reach:
    """The labels a group's runs needed to reach `target` test accuracy."""

    target: float
    per_run: tuple[int | None, ...]  # None: never reached
    median: float  # inf where the runs that never reached it make up half or more
    low: int | None  # the fewest labels of a run; None where no run reached it
    high: float  # the most; inf where some run never reached it
    missed: int  # how many runs never reached it


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean over seeds and its bootstrap interval (None with one seed)."""

    mean: float
    low: float | None
    high: float | None


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """One experiment: runs with the same settings but for the seed, on the label counts they all reached."""

    label: str
    runs: tuple[Run, ...]  # by seed
    labels: np.ndarray  # int [R]
    accuracy: np.ndarray  # float [S, R]: each run's test accuracy at `labels`
    reach: tuple[Reach, ...]  # one per target
    final: Interval

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """`first` against `second` on the seeds both have: n pairs, mean of first - second, two-sided p."""

    first: str
    second: str
    measure: str
    n: int
    mean_difference: float | None
    p_value: float | None  # None where there is no test; `note` says why
    note: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Comparison:
    at: tuple[float, ...]
    groups: tuple[Group, ...]
    tests: tuple[PairedTest, ...]


# Reading runs ---------------------------------------------------------------------------------------------------


def flat_settings(config: dict, prefix: str = "") -> dict:
    """A config.json's settings as {"loop.acquisition": "bald", ...}, without its record."""
    flat = {}
    for key, value in config.items():
        if key == "record":
            continue
        if isinstance(value, dict) and key != "settings":  # a model's settings stay one value
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _data(config: dict) -> tuple[str, str]:
    """What a run's data hold, as text, and a short name for them.

    The record of the source, with where it lay left out when the md5 of every file says
    what it held: MNIST from the cache and from the clone are the same data.
    """
    record = config["record"]
    source = dict(record["data"]) if isinstance(record.get("data"), dict) else {}
    source.pop("origin", None)
    md5 = source.get("md5")
    named = source.get("name") or Path(str(source.get("path") or "?")).name
    if isinstance(md5, dict) and md5 and all(md5.values()):
        source.pop("path", None)
    identity = {"source": source, "input_shape": record.get("input_shape"), "classes": record.get("num_classes")}
    return json.dumps(identity, sort_keys=True), f"{source.get('kind', '?')} {named}"


def load_run(run_dir: str | os.PathLike) -> Run:
    """A run directory's settings, seed, data and learning curve; a one-line JalError for anything else."""
    path = Path(run_dir)
    if not path.is_dir():
        raise JalError(f"{path}: no such directory; pass jal run directories")
    if store.is_filter_dir(path):
        raise JalError(f"{path}: a jal filter directory, not a run; pass jal run directories")
    config = store.read_config(path)
    settings = flat_settings(config)
    if not isinstance(settings.get(ACQUISITION), str) or not _is_int(settings.get("seed")):
        raise JalError(f"{path / store.CONFIG}: no loop.acquisition or seed; is {path} a jal run directory?")
    metrics = store.read_metrics(path)
    if not metrics:
        raise JalError(f"{path}: no finished round yet; wait for one, or leave it out")
    for number, line in enumerate(metrics, 1):
        labels, accuracy = line.get("num_labeled"), line.get("test_accuracy")
        valid_accuracy = isinstance(accuracy, int | float) and not isinstance(accuracy, bool) and 0 <= accuracy <= 1
        if not (_is_int(labels) and valid_accuracy):
            raise JalError(f"{path / store.METRICS}:{number}: no num_labeled with a test_accuracy from 0 to 1; "
                           "the file is corrupt or not jal's: restore it, or jal run again")  # fmt: skip
    labels = np.array([m["num_labeled"] for m in metrics])
    if (np.diff(labels) <= 0).any():
        raise JalError(f"{path / store.METRICS}: its label counts do not grow round by round; "
                       "the file is corrupt or not jal's: restore it, or jal run again")  # fmt: skip
    data, data_name = _data(config)
    settings = {k: v for k, v in settings.items() if k not in PER_RUN}
    accuracy = np.array([m["test_accuracy"] for m in metrics], float)
    return Run(path, settings, config["seed"], data, data_name, labels, accuracy)


def load_runs(run_dirs: list[str | os.PathLike]) -> list[Run]:
    """`load_run` of each directory, in order."""
    if not run_dirs:
        raise JalError("no run directories given; pass one or more jal run directories")
    return [load_run(d) for d in run_dirs]


# Grouping -------------------------------------------------------------------------------------------------------


def _key(run: Run) -> tuple:
    """What makes an experiment: its settings. A setting that is null counts as absent, as in older configs."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in run.settings.items() if v is not None))


def _shown(value: str | None) -> str:
    """A setting's JSON as a label shows it: text without quotes."""
    if value is None:
        return "null"
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else value


def group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by experiment, labelled by acquisition and the other settings that differ between groups.

    Groups come in the order of their first run.
    """
    keys = [_key(run) for run in runs]
    distinct = [dict(key) for key in dict.fromkeys(keys)]
    differing = sorted(
        {k for a, b in itertools.combinations(distinct, 2) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        - {ACQUISITION}
    )
    groups: dict[str, list[Run]] = {}
    for key, run in zip(keys, runs, strict=True):
        settings = dict(key)
        suffix = ", ".join(f"{k}={_shown(settings.get(k))}" for k in differing)
        label = run.settings[ACQUISITION] + (f" ({suffix})" if suffix else "")
        groups.setdefault(label, []).append(run)
    return groups


# Statistics -----------------------------------------------------------------------------------------------------


def labels_to_reach(labels: np.ndarray, accuracy: np.ndarray, target: float) -> int | None:
    """The first label count whose accuracy is at least `target`; None where none is."""
    reached = np.flatnonzero(np.asarray(accuracy) >= target)
    return int(labels[reached[0]]) if len(reached) else None


def summarise_reach(per_run: list[int | None], target: float) -> Reach:
    """Median and range over runs of the labels to reach `target`; never counts as +inf."""
    values = np.array([math.inf if n is None else n for n in per_run], float)
    hits = [n for n in per_run if n is not None]
    return Reach(target, tuple(per_run), float(np.median(values)), min(hits, default=None), float(values.max()),
                 len(per_run) - len(hits))  # fmt: skip


def bootstrap_interval(values, level: float = 0.95, resamples: int = RESAMPLES, seed: int = SEED) -> tuple:
    """The percentile bootstrap interval of the mean of `values`: seeds drawn with replacement."""
    values = np.asarray(values, float)
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    means = values[draws].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def sign_flip_p(differences) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of the mean difference.

    Under the null hypothesis each pair's difference is as likely to have either sign; p is the
    share of sign assignments whose sum is at least as far from 0 as the one observed. All
    2^n of them for n <= EXACT_PAIRS, else RANDOM_FLIPS random ones (counting the observed
    one, so that p is never 0).
    """
    d = np.asarray(differences, float)
    observed = abs(d.sum())
    tolerance = 1e-9 * max(1.0, np.abs(d).sum())  # sums of the same numbers in another order
    if len(d) <= EXACT_PAIRS:
        sums = np.zeros(1)
        for x in d:  # every sign assignment's sum: each difference doubles the list
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= observed - tolerance))
    signs = np.random.default_rng(SEED).choice([-1.0, 1.0], (RANDOM_FLIPS, len(d)))
    beyond = np.count_nonzero(np.abs(signs @ d) >= observed - tolerance)
    return (1 + beyond) / (1 + RANDOM_FLIPS)


# Comparing ------------------------------------------------------------------------------------------------------


def _check_targets(at) -> tuple[float, ...]:
    at = tuple(at)
    if not at or not all(isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1 for t in at):
        raise JalError(f"`at` {at}: give accuracies above 0 and at most 1, e.g. 0.9 0.95")
    return tuple(float(t) for t in at)


def _check_same_data(runs: list[Run]) -> None:
    other = next((run for run in runs if run.data != runs[0].data), None)
    if other is not None:
        raise JalError(f"{runs[0].path} ({runs[0].data_name}) and {other.path} ({other.data_name}) were run on "
                       "different data; compare runs of one dataset at a time")  # fmt: skip


def summarise(label: str, runs: list[Run], at: tuple[float, ...]) -> Group:
    """A group's curves on the label counts all its runs reached, labels to each target, and final accuracy."""
    runs = sorted(runs, key=lambda run: run.seed)
    for a, b in itertools.pairwise(runs):
        if a.seed == b.seed:
            raise JalError(f"{a.path} and {b.path}: the same settings and seed {a.seed}; pass one of them")
    labels = functools.reduce(np.intersect1d, [run.labels for run in runs])
    if not len(labels):
        raise JalError(f"{label}: its runs have no label count in common; compare runs with the same settings")
    accuracy = np.array([run.accuracy[np.searchsorted(run.labels, labels)] for run in runs])
    reach = tuple(summarise_reach([labels_to_reach(labels, row, t) for row in accuracy], t) for t in at)
    final = accuracy[:, -1]
    interval = bootstrap_interval(final) if len(runs) > 1 else (None, None)
    return Group(label, tuple(runs), labels, accuracy, reach, Interval(float(final.mean()), *interval))


def paired_tests(first: Group, second: Group) -> list[PairedTest]:
    """`first` against `second` by seed: the final accuracy and the area under the learning curve."""
    seeds = sorted(set(first.seeds) & set(second.seeds))
    common = np.intersect1d(first.labels, second.labels)
    if len(common) == 0:
        return [PairedTest(first.label, second.label, "learning curves", 0, None, None, "no label count in common")]
    measures = {
        f"final accuracy ({common[-1]} labels)": lambda curves: curves[:, -1],
        f"area under the learning curve (mean accuracy, {common[0]}-{common[-1]} labels)": lambda c: c.mean(axis=1),
    }

    def curves(g: Group) -> np.ndarray:  # [pairs, common label counts], rows in the order of `seeds`
        rows = [g.seeds.index(s) for s in seeds]
        return g.accuracy[np.ix_(rows, np.searchsorted(g.labels, common))]

    if len(seeds) < 2:
        shared = f"{len(seeds)} (seed {seeds[0]})" if seeds else "none"
        note = f"needs 2 or more seeds run in both groups; they share {shared}"
        return [PairedTest(first.label, second.label, measure, len(seeds), None, None, note) for measure in measures]
    tests = []
    for measure, of in measures.items():
        d = of(curves(first)) - of(curves(second))
        tests.append(PairedTest(first.label, second.label, measure, len(seeds), float(d.mean()), sign_flip_p(d)))
    return tests


def _pairs(groups: dict[str, Group], pairs) -> list[tuple[Group, Group]]:
    if pairs is None:
        return list(itertools.combinations(groups.values(), 2))
    chosen = []
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise JalError(f"pair {pair!r}: name two different groups")
        missing = next((label for label in pair if label not in groups), None)
        if missing is not None:
            raise JalError(f"no group {missing!r}; name groups by their labels: {', '.join(map(repr, groups))}")
        chosen.append((groups[pair[0]], groups[pair[1]]))
    return chosen


def compare(runs: list[Run], at=TARGETS, pairs=None) -> Comparison:
    """Every group's summary at the accuracies `at`, and the paired tests of `pairs` (None: every pair)."""
    if not runs:
        raise JalError("no runs to compare; pass one or more jal run directories")
    at = _check_targets(at)
    _check_same_data(runs)
    groups = {label: summarise(label, members, at) for label, members in group(runs).items()}
    tests = [test for a, b in _pairs(groups, pairs) for test in paired_tests(a, b)]
    return Comparison(at, tuple(groups.values()), tuple(tests))


# Output ---------------------------------------------------------------------------------------------------------


def _percent(target: float) -> str:
    return f"{100 * target:g}%"


def _reach_cell(reach: Reach, last: int) -> str:
    """'median (min to max)', '>N' where runs never reached the target by the last label count N."""

    def shown(value) -> str:
        return f">{last}" if value is None or math.isinf(value) else f"{value:g}"

    runs = len(reach.per_run)
    missed = f"{reach.missed} of {runs} not reached" if reach.missed else ""
    if reach.low is None:
        return f"{shown(reach.median)} ({missed})"
    cell = shown(reach.median) + (f" ({shown(reach.low)} to {shown(reach.high)})" if runs > 1 else "")
    return cell + (f", {missed}" if missed else "")


def _final_cell(final: Interval) -> str:
    return f"{final.mean:.4f}" + (" (one seed)" if final.low is None else f" [{final.low:.4f}, {final.high:.4f}]")


def _p_cell(test: PairedTest) -> str:
    return test.note if test.p_value is None else f"{test.p_value:.4g}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def markdown(comparison: Comparison) -> str:
    """The groups' table, the paired tests' table, and what their numbers are."""
    header = ["group", "seeds", *(f"labels to {_percent(t)}: median (range)" for t in comparison.at),
              "final labels", "final accuracy: mean [95% CI]"]  # fmt: skip
    lines = [_row(header), _row(["---"] * len(header))]
    for g in comparison.groups:
        last = int(g.labels[-1])
        lines.append(_row([g.label, len(g.runs), *(_reach_cell(r, last) for r in g.reach), last, _final_cell(g.final)]))
    lines += ["", "Labels: the first label count at which test accuracy reached the target; median and range "
              "over seeds, \">N\": not reached by the last label count N (counted as never for the median). "
              f"Final accuracy: mean over seeds, 95% percentile bootstrap interval over seeds ({RESAMPLES:,} "
              "resamples), narrow with few seeds: it covers about 85% of the time with 5, 90% with 10."]  # fmt: skip
    if comparison.tests:
        lines += ["", _row(["pair", "measure", "n", "mean difference", "p"]), _row(["---"] * 5)]
        for t in comparison.tests:
            difference = "-" if t.mean_difference is None else f"{t.mean_difference:+.4f}"
            lines.append(_row([f"{t.first} - {t.second}", t.measure, t.n, difference, _p_cell(t)]))
        lines += ["", "Paired by seed (seeds in both groups): two-sided sign-flip permutation test of the mean "
                  f"difference, exact for n <= {EXACT_PAIRS}; the smallest p n pairs can give is 2/2^n."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    """A CSV cell: "" for none, "inf" for never, numbers as Python writes them."""
    return "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def csv(comparison: Comparison, table: str = "groups") -> str:
    """One table as CSV: "groups" (one row per group) or "tests" (one row per paired test)."""
    if table not in TABLES:
        raise JalError(f"table {table!r}: choose one of {', '.join(TABLES)}")
    out = io.StringIO()
    writer = csv_module.writer(out, lineterminator="\n")
    if table == "tests":
        writer.writerow(["first", "second", "measure", "n", "mean_difference", "p_value", "note"])
        for t in comparison.tests:
            writer.writerow([t.first, t.second, t.measure, t.n, _number(t.mean_difference), _number(t.p_value), t.note])
        return out.getvalue()
    reach_columns = [f"labels_to_{t:g}_{part}" for t in comparison.at for part in ("median", "min", "max", "missed")]
    writer.writerow(["group", "runs", "seeds", "final_labels", "final_accuracy_mean", "final_accuracy_ci_low",
                     "final_accuracy_ci_high", *reach_columns])  # fmt: skip
    for g in comparison.groups:
        reach = [_number(x) for r in g.reach for x in (r.median, r.low, r.high, r.missed)]
        writer.writerow([g.label, len(g.runs), " ".join(map(str, g.seeds)), int(g.labels[-1]), _number(g.final.mean),
                         _number(g.final.low), _number(g.final.high), *reach])  # fmt: skip
    return out.getvalue()


def plot(comparison: Comparison, path: str | os.PathLike, *, band: str = "range", title: str | None = None,
         bottom: float | None = None) -> Path:  # fmt: skip
    """Test accuracy against labels: per group the median over seeds and a band ("range" or "iqr").

    Written to a temporary file beside `path`, then renamed onto it: a reader never sees half a figure.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, the backend follows the suffix

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise JalError(f"`path` {path}: use a {', '.join(FIGURE_SUFFIXES)} file name")
    if band not in BANDS:
        raise JalError(f"band {band!r}: choose one of {', '.join(BANDS)}")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for g in comparison.groups:
        seeds = len(g.runs)
        label = f"{g.label} ({seeds} seed{'s' if seeds > 1 else ''})".replace("$", r"\$")  # no TeX from labels
        (line,) = ax.plot(g.labels, np.median(g.accuracy, axis=0), label=label)
        if seeds > 1:
            low, high = (
                (g.accuracy.min(0), g.accuracy.max(0)) if band == "range" else np.percentile(g.accuracy, [25, 75], 0)
            )
            ax.fill_between(g.labels, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for target in comparison.at:
        ax.axhline(target, color="grey", linewidth=0.5, linestyle="--")
    ax.set(xlabel="labels", ylabel="test accuracy", title=title or f"Median over seeds, band: {BANDS[band]}")
    if bottom is not None:
        ax.set_ylim(bottom=bottom, top=1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with outputs.new_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower())
    return path
