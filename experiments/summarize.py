"""Prints a Markdown table of runs: final labels and accuracy, and wall time per round.

    .venv/bin/python experiments/summarize.py RUN_DIR [RUN_DIR ...]

Round 0 includes compilation, so s/round is the median over the later rounds.
"""

import sys
from pathlib import Path
from statistics import median

from jal.store import read_config, read_metrics


def main(run_dirs: list[str]) -> None:
    columns = ["run", "acquisition", "labels", "final test accuracy", "accuracy per round", "s/round", "total s"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in run_dirs:
        config, metrics = read_config(run_dir), read_metrics(run_dir)
        curve = " ".join(f"{m['test_accuracy']:.3f}" for m in metrics)
        later = [m["seconds"] for m in metrics[1:]] or [metrics[0]["seconds"]]
        total = sum(m["seconds"] for m in metrics)
        last, acquisition = metrics[-1], config["loop"]["acquisition"]
        print(
            f"| {Path(run_dir).name} | {acquisition} | {last['num_labeled']} | {last['test_accuracy']:.4f} "
            f"| {curve} | {median(later):.1f} | {total:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
