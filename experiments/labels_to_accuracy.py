"""Labels each acquisition method needs to reach 90% and 95% test accuracy, and its curves.

    .venv/bin/python experiments/labels_to_accuracy.py RUN_DIR [RUN_DIR ...] [--figure F.png]
        [--title TITLE] [--ylim LOW] [--json RUNS.json] [--paper]

Prints `jal.compare`'s Markdown tables: runs grouped by their settings but for the seed; per
group the median over its runs (seeds) of the first label count at which test accuracy
reached the threshold, with the range over its runs in brackets (">N": not reached by the
last label count N), and the final accuracy with a bootstrap interval; every pair of groups
tested on the seeds they share. --figure draws the median curve and min-max band of each
group. --paper adds the BatchBALD paper's medians (Kirsch et al., 2019, MNIST) beside them.
--json writes every run's curves (labels, test accuracy and NLL, seconds per round) and the
settings they share.
"""

import argparse
import json
import sys
from pathlib import Path

from jal import compare
from jal.store import read_metrics

# The BatchBALD paper's MNIST medians (labels to 90%, 95%) by acquisition and labels per step, top-k selection.
PAPER = {("bald", 1): (96, 206), ("bald", 10): (120, 250), ("batchbald", 10): (90, 200)}


def paper_table(comparison: compare.Comparison) -> str:
    lines = ["| group | paper: labels to 90% / 95% |", "| --- | --- |"]
    for group in comparison.groups:
        settings = group.runs[0].settings
        key = (settings[compare.ACQUISITION], settings.get("loop.acquire"))
        known = settings.get("loop.sampling", "topk") == "topk" and key in PAPER
        lines.append(f"| {group.label} | {' / '.join(map(str, PAPER[key])) if known else '-'} |")
    return "\n".join(lines) + "\n"


def write_json(comparison: compare.Comparison, path: str) -> None:
    runs = [(group.label, run) for group in comparison.groups for run in group.runs]
    first = runs[0][1].settings
    shared = {k: v for k, v in first.items() if all(run.settings.get(k) == v for _, run in runs)}
    rows = []
    for label, run in runs:
        metrics = read_metrics(run.path)
        rows.append(
            {
                "run": run.path.name,
                "group": label,
                "acquisition": run.settings[compare.ACQUISITION],
                "seed": run.seed,
                "num_labeled": [m["num_labeled"] for m in metrics],
                "test_accuracy": [round(m["test_accuracy"], 4) for m in metrics],
                "test_nll": [round(m["test_nll"], 4) for m in metrics],
                "seconds": [round(m["seconds"], 2) for m in metrics],
            }
        )
    # One line per run, so that the file stays small and readable.
    lines = ",\n  ".join(json.dumps(row) for row in rows)
    Path(path).write_text(f'{{"shared_settings": {json.dumps(shared)},\n "runs": [\n  {lines}\n ]}}\n')
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--figure", help="draw the median curve and min-max band of each group here")
    parser.add_argument("--title", default="MNIST, 10 acquired per iteration")
    parser.add_argument("--ylim", type=float, default=0.5, help="the figure's lowest accuracy")
    parser.add_argument("--json", help="write the runs' curves here")
    parser.add_argument("--paper", action="store_true", help="add the BatchBALD paper's MNIST medians")
    args = parser.parse_args()
    comparison = compare.compare(compare.load_runs(args.run_dirs), at=(0.90, 0.95))
    print(compare.markdown(comparison))
    if args.paper:
        print(paper_table(comparison))
    if args.figure:
        print(f"wrote {compare.plot(comparison, args.figure, title=args.title, bottom=args.ylim)}", file=sys.stderr)
    if args.json:
        write_json(comparison, args.json)


if __name__ == "__main__":
    main()
