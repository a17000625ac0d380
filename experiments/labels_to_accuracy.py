"""Labels each acquisition method needs to reach 90% and 95% test accuracy, and its curves.

    .venv/bin/python experiments/labels_to_accuracy.py RUN_DIR [RUN_DIR ...] [--figure F.png]

Runs are grouped by their settings but for the seed (`jal.figures.group_runs`); a
group's number is the median over its runs (seeds) of the first label count at which
test accuracy reached the threshold. The BatchBALD paper's medians (Kirsch et al., 2019, MNIST) are printed beside them.
"""

import argparse
from statistics import median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jal.figures import group_runs  # noqa: E402
from jal.report import THRESHOLDS, labels_to_reach  # noqa: E402

PAPER = {"bald (b=1)": (96, 206), "bald": (120, 250), "batchbald": (90, 200)}  # b=10 unless noted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--figure")
    args = parser.parse_args()
    groups = group_runs(args.run_dirs)

    print("| method | runs | labels to 90% | labels to 95% | final labels | final accuracy | paper (90% / 95%) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method, runs in groups.items():
        cells = []
        for threshold in THRESHOLDS:
            reached = [labels_to_reach(metrics, threshold) for metrics in runs]
            hits = [n for n in reached if n is not None]
            missed = len(reached) - len(hits)
            # The median treats a run that never got there as needing more than its last count.
            cell = f"{median(n if n is not None else np.inf for n in reached):g}" if hits else "not reached"
            cells.append(cell + (f" ({missed} of {len(runs)} not reached)" if missed and hits else ""))
        final = [metrics[-1]["test_accuracy"] for metrics in runs]
        paper = PAPER.get(method)
        print(
            f"| {method} | {len(runs)} | {cells[0]} | {cells[1]} | {runs[0][-1]['num_labeled']} "
            f"| {np.mean(final):.4f} | {f'{paper[0]} / {paper[1]}' if paper else '-'} |"
        )

    if args.figure:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method, runs in groups.items():
            labels = np.array([m["num_labeled"] for m in runs[0]])
            accuracy = np.array([[m["test_accuracy"] for m in metrics[: len(labels)]] for metrics in runs])
            line = ax.plot(
                labels, accuracy.mean(axis=0), label=f"{method} ({len(runs)} run{'s' if len(runs) > 1 else ''})"
            )[0]
            if len(runs) > 1:
                ax.fill_between(labels, accuracy.min(axis=0), accuracy.max(axis=0), color=line.get_color(), alpha=0.2)
        for threshold in THRESHOLDS:
            ax.axhline(threshold, color="gray", lw=0.5, ls="--")
        ax.set(xlabel="labels", ylabel="test accuracy", ylim=(0.5, 1.0), title="MNIST, 10 acquired per iteration")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
