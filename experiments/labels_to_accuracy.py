"""Labels each acquisition method needs to reach 90% and 95% test accuracy, and its curves.

    .venv/bin/python experiments/labels_to_accuracy.py RUN_DIR [RUN_DIR ...] [--figure F.png]
        [--title TITLE] [--ylim LOW] [--json RUNS.json] [--paper]

Runs are grouped by their settings but for the seed (`jal.figures.group_runs`); a
group's number is the median over its runs (seeds) of the first label count at which
test accuracy reached the threshold, with the range over its runs in brackets; a run that
never got there counts as needing more than its last count. --paper adds the BatchBALD
paper's medians (Kirsch et al., 2019, MNIST) beside them. --json writes every run's
curves (labels, test accuracy and NLL, seconds per round) and the settings they share.
"""

import argparse
import json
import sys
from pathlib import Path
from statistics import median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jal.figures import PER_RUN, flat_settings, group_runs  # noqa: E402
from jal.report import THRESHOLDS, labels_to_reach  # noqa: E402
from jal.store import read_config, read_metrics  # noqa: E402

PAPER = {"bald (b=1)": (96, 206), "bald": (120, 250), "batchbald": (90, 200)}  # b=10 unless noted
NOT_REACHED = "not reached"


def labels_cell(runs: list[list[dict]], threshold: float) -> str:
    """'median (min-max)' of the labels to `threshold` over runs, "not reached" where runs never got there."""
    reached = [labels_to_reach(metrics, threshold) for metrics in runs]
    hits = [n for n in reached if n is not None]
    if not hits:
        return NOT_REACHED
    middle = median(n if n is not None else np.inf for n in reached)
    cell = NOT_REACHED if np.isinf(middle) else f"{middle:g}"
    if len(runs) > 1:
        cell += f" ({min(hits)}-{max(hits) if len(hits) == len(runs) else NOT_REACHED})"
    missed = len(runs) - len(hits)
    return cell + (f", {missed} of {len(runs)} not reached" if missed else "")


def final_cell(runs: list[list[dict]]) -> str:
    final = [metrics[-1]["test_accuracy"] for metrics in runs]
    return f"{np.mean(final):.4f}" + (f" ({min(final):.3f}-{max(final):.3f})" if len(runs) > 1 else "")


def print_table(groups: dict[str, list[list[dict]]], paper: bool) -> None:
    ranges = " (range)" if any(len(runs) > 1 for runs in groups.values()) else ""
    columns = ["method", "runs", *(f"labels to {t:.0%}: median{ranges}" for t in THRESHOLDS), "final labels"]
    columns += [f"final accuracy: mean{ranges}"] + ["paper (90% / 95%)"] * paper
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for method, runs in groups.items():
        cells = [method, str(len(runs)), *(labels_cell(runs, t) for t in THRESHOLDS), str(runs[0][-1]["num_labeled"])]
        cells.append(final_cell(runs))
        if paper:
            cells.append(f"{PAPER[method][0]} / {PAPER[method][1]}" if method in PAPER else "-")
        print("| " + " | ".join(cells) + " |")


def write_json(run_dirs: list[str], groups: dict[str, list[list[dict]]], path: str) -> None:
    flats = [flat_settings(read_config(d)) for d in run_dirs]
    shared = {k: v for k, v in flats[0].items() if k not in PER_RUN and all(f.get(k) == v for f in flats)}
    runs = []
    for run_dir, settings in zip(run_dirs, flats, strict=True):
        metrics = read_metrics(run_dir)
        runs.append(
            {
                "run": Path(run_dir).name,
                "group": next(label for label, members in groups.items() if metrics in members),
                "acquisition": settings["loop.acquisition"],
                "seed": settings["seed"],
                "num_labeled": [m["num_labeled"] for m in metrics],
                "test_accuracy": [round(m["test_accuracy"], 4) for m in metrics],
                "test_nll": [round(m["test_nll"], 4) for m in metrics],
                "seconds": [round(m["seconds"], 2) for m in metrics],
            }
        )
    # One line per run, so that the file stays small and readable.
    rows = ",\n  ".join(json.dumps(run) for run in runs)
    Path(path).write_text(f'{{"shared_settings": {json.dumps(shared)},\n "runs": [\n  {rows}\n ]}}\n')
    print(f"wrote {path}", file=sys.stderr)


def plot(groups: dict[str, list[list[dict]]], path: str, title: str, low: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in groups.items():
        rounds = min(len(metrics) for metrics in runs)
        labels = np.array([m["num_labeled"] for m in runs[0][:rounds]])
        accuracy = np.array([[m["test_accuracy"] for m in metrics[:rounds]] for metrics in runs])
        plural = "s" if len(runs) > 1 else ""
        (line,) = ax.plot(labels, accuracy.mean(axis=0), label=f"{method} ({len(runs)} run{plural})")
        if len(runs) > 1:
            ax.fill_between(labels, accuracy.min(axis=0), accuracy.max(axis=0), color=line.get_color(), alpha=0.2)
    for threshold in THRESHOLDS:
        ax.axhline(threshold, color="gray", lw=0.5, ls="--")
    ax.set(xlabel="labels", ylabel="test accuracy", ylim=(low, 1.0), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--figure", help="draw the mean curve and min-max band of each method here")
    parser.add_argument("--title", default="MNIST, 10 acquired per iteration")
    parser.add_argument("--ylim", type=float, default=0.5, help="the figure's lowest accuracy")
    parser.add_argument("--json", help="write the runs' curves here")
    parser.add_argument("--paper", action="store_true", help="add the BatchBALD paper's MNIST medians")
    args = parser.parse_args()
    groups = group_runs(args.run_dirs)
    print_table(groups, args.paper)
    if args.figure:
        plot(groups, args.figure, args.title, args.ylim)
    if args.json:
        write_json(args.run_dirs, groups, args.json)


if __name__ == "__main__":
    main()
