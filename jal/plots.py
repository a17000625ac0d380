"""Figures of one or more run directories."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jal.errors import JalError  # noqa: E402
from jal.store import TEST_SCORES, read_config, read_metrics, read_scores  # noqa: E402


def run_label(run_dir: Path, config: dict) -> str:
    return f"{run_dir.name} ({config.get('acquisition', '?')})"


def _plot_sorted_scores(ax, run_dir: Path, label: str, split: str, color: str) -> None:
    scores = read_scores(run_dir, split)
    finished = np.flatnonzero(~np.isnan(scores).all(axis=1))
    if len(finished) == 0:
        return
    for round_, style in ((finished[0], ":"), (finished[-1], "-")):
        # Descending, as the reference's plot_scores draws them.
        ax.plot(-np.sort(-scores[round_]), style, color=color, label=f"{label}, round {round_}")


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Test accuracy against labels for every run, and sorted pool and test score curves.

    Returns:
      The path written.
    """
    out = Path(out)
    if out.suffix.lower() not in {".png", ".svg", ".pdf"}:
        raise JalError(f"--out {out}: use a .png, .svg or .pdf file name")
    runs = [(Path(d), read_config(d), read_metrics(d)) for d in run_dirs]
    fig, (acc_ax, pool_ax, test_ax) = plt.subplots(1, 3, figsize=(18, 5))
    for run_dir, config, metrics in runs:
        label = run_label(run_dir, config)
        labels, accuracy = [m["num_labeled"] for m in metrics], [m["test_accuracy"] for m in metrics]
        (line,) = acc_ax.plot(labels, accuracy, marker=".", label=label)
        _plot_sorted_scores(pool_ax, run_dir, label, "pool", line.get_color())
        if (run_dir / TEST_SCORES).exists():
            _plot_sorted_scores(test_ax, run_dir, label, "test", line.get_color())
    acc_ax.set(xlabel="number of labels", ylabel="test accuracy", title="Test accuracy")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()
    score_name = runs[0][1].get("score_name", "score")
    for ax, split in ((pool_ax, "pool"), (test_ax, "test")):
        ax.set(xlabel=f"{split} samples, sorted by score", ylabel=score_name, title=f"Sorted {split} scores")
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise JalError(f"--out {out}: cannot write the figure ({e}); choose a writable place") from e
    finally:
        plt.close(fig)
    return out
