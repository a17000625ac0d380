"""`jal figures`: the seed text's figures, drawn from local run directories.

* the informativeness curve with its data-filtering and active-learning regions (XKCD
  style, PNG and SVG) and the simulated top-1 selection (GIF), as the seed's illustration
  script draws them;
* the BALD score evolution of a run (GIF): an EMA of each sample's score (decay 0.9),
  acquired samples at zero, samples ordered by their round-0 scores;
* learning curves, mean and band (min to max) over the runs of each acquisition;
* the diagnostics of `jal analyze`, when the run has them;
* the filtering curve of a `jal filter` directory;
* `jal plot`: test accuracy against labels and the sorted score curves of any runs.

It reads run directories through `jal.store` alone: drawing never imports the training stack.

The XKCD style wants the Humor Sans font; without it matplotlib falls back to its default
font, and its warnings about the missing font are silenced.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from jal import compare, outputs, store  # noqa: E402
from jal.diagnostics import ema  # noqa: E402
from jal.errors import JalError  # noqa: E402

FILTERING_COLOR, ACTIVE_COLOR = "red", "blue"
SELECTION_FRAMES = 40


@contextlib.contextmanager
def xkcd():
    """plt.xkcd(), without a warning per text when the XKCD fonts are not installed."""
    font_logger = logging.getLogger("matplotlib.font_manager")
    level = font_logger.level
    font_logger.setLevel(logging.ERROR)
    try:
        with plt.xkcd():
            yield
    finally:
        font_logger.setLevel(level)


def _save(fig, path: Path) -> Path:
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def _text(label: str) -> str:
    """A label from a file, shown as it is: matplotlib would read $...$ in it as mathematics."""
    return label.replace("$", r"\$")


def _informativeness() -> tuple[np.ndarray, np.ndarray]:
    """The seed's synthetic diminishing-returns curve over 10,000 sorted samples."""
    x = np.linspace(1, 10000, 10000)
    return x, 1 / (0.9 / 99.9 * x + (1 - 0.9 / 99.9))


def informativeness_curve(out_dir: Path, filtering: float = 0.05, active: float = 0.2) -> list[Path]:
    """The seed's Figure 1: where filtering (offline) and active learning (online) act."""
    x, y = _informativeness()
    with xkcd():
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.plot(x, y, color="black")
        ax.fill_between(
            x, 0, y, where=y < filtering, color=FILTERING_COLOR, alpha=0.1, label="Data filtering region (offline)"
        )
        ax.axhline(filtering, color=FILTERING_COLOR, linestyle="--", linewidth=1)
        ax.axvline(x[np.argmax(y <= active)], color=ACTIVE_COLOR, linestyle="--", linewidth=1)
        ax.fill_betweenx(
            y, 0, x, where=y > active, color=ACTIVE_COLOR, alpha=0.1, label="Active learning region (online)"
        )
        ax.set(
            xlabel="Samples sorted by informativeness",
            ylabel="Informativeness",
            title="Active Selection vs. Data Filtering",
            ylim=(0, 1.05),
            xlim=(0, x.max()),
        )
        ax.legend()
        paths = [out_dir / "active_vs_filtering_xkcd.png", out_dir / "active_vs_filtering_xkcd.svg"]
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def selection_animation(out_dir: Path, *, frames: int = SELECTION_FRAMES, seed: int = 0, filtering=0.05) -> Path:
    """The seed's simulated top-1 selection (GIF): the best sample is taken, the rest decay noisily.

    Frame 0 is the initial curve and every later frame one selection step (the seed's
    script repeats its first frame, which GIF writers then merge away).
    """
    x, y = _informativeness()
    rng = np.random.default_rng(seed)
    with xkcd():
        fig, ax = plt.subplots(figsize=(8, 5))
        points = ax.scatter(x, y, color="black", s=1)
        selected = ax.scatter([], [], color=ACTIVE_COLOR, s=100, alpha=0.1)
        step = ax.text(0.75, 0.9, "", transform=ax.transAxes)
        ax.axhline(filtering, color=FILTERING_COLOR, linestyle="--", linewidth=1)
        ax.set(
            xlabel="Samples sorted by informativeness",
            ylabel="Informativeness",
            title="Simulation of Top-1 Active Selection",
            ylim=(0, 1.05),
            xlim=(0, 1000),
        )
        state = {"y": y.copy()}

        def animate(frame):
            current = state["y"]
            if frame > 0:  # as the seed: take the top sample, decay the rest by Gumbel noise
                current[np.argmax(current)] = 0.0
                current = current * (1 - np.clip(rng.gumbel(0, 0.1, len(current)), 0, 1))
                state["y"] = current
            top = np.argmax(current)
            selected.set_offsets(np.c_[x[top], current[top]])
            points.set_offsets(np.c_[x, current])
            step.set_text(f"step {frame}")
            return points, selected, step

        fig.tight_layout()
        path = out_dir / "active_selection_animation.gif"
        FuncAnimation(fig, animate, frames=frames, interval=200, blit=False).save(path, writer=PillowWriter(fps=5))
    plt.close(fig)
    return path


def score_evolution_animation(run_dir: Path, out_dir: Path, *, decay: float = 0.9) -> Path:
    """The seed's Figure 3 from a run directory: EMA of the pool scores round by round."""
    config, metrics, history, labeled = store.read_history(run_dir)
    smoothed = ema(history, labeled, decay)
    position = np.empty(history.shape[1], int)  # x: the rank of the round-0 score, best first
    position[np.argsort(-history[0], kind="stable")] = np.arange(history.shape[1])
    score_name = _text(config["record"]["score_name"])
    with xkcd():
        fig, ax = plt.subplots(figsize=(10, 6))
        points = ax.scatter(position, smoothed[0], color="black", s=2)
        acquired = ax.scatter([], [], color=ACTIVE_COLOR, s=60, alpha=0.5, label="acquired this round")
        text = ax.text(0.02, 0.95, "", transform=ax.transAxes, fontsize=12)
        ax.set(
            title=f"{score_name.upper()} score evolution (EMA {decay})",
            xlabel="Samples, ordered by their round-0 score",
            ylabel=f"Informativeness ({score_name} score)",
            xlim=(0, history.shape[1]),
            ylim=(0, max(float(np.nanmax(smoothed)), 1e-6) * 1.1),
        )
        ax.legend(loc="upper right")

        def animate(r):
            points.set_offsets(np.c_[position, smoothed[r]])
            chosen = np.asarray(metrics[r]["acquired"], int)
            acquired.set_offsets(np.c_[position[chosen], smoothed[r, chosen]] if len(chosen) else np.empty((0, 2)))
            text.set_text(f"round {r}: {metrics[r]['num_labeled']} labels")
            return points, acquired, text

        fig.tight_layout()
        path = out_dir / "score_evolution_ema.gif"
        FuncAnimation(fig, animate, frames=len(metrics), interval=100, blit=False).save(
            path, writer=PillowWriter(fps=10)
        )
    plt.close(fig)
    return path


def group_runs(run_dirs: list[Path]) -> dict[str, list[list[dict]]]:
    """The metrics of runs grouped by experiment (the same settings but for the seed), as `jal.compare.group` does."""
    groups = compare.group(compare.load_runs(run_dirs))
    return {_text(label): [store.read_metrics(run.path) for run in runs] for label, runs in groups.items()}


def learning_curves(run_dirs: list[Path], path: Path) -> Path:
    """Test accuracy against labels: per experiment, the mean over its runs (seeds) and their range."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in group_runs(run_dirs).items():
        rounds = min(len(metrics) for metrics in runs)
        labels = [m["num_labeled"] for m in runs[0][:rounds]]
        accuracy = np.array([[m["test_accuracy"] for m in metrics[:rounds]] for metrics in runs])
        plural = "s" if len(runs) > 1 else ""
        (line,) = ax.plot(labels, accuracy.mean(axis=0), label=f"{label} ({len(runs)} run{plural})")
        if len(runs) > 1:
            ax.fill_between(labels, accuracy.min(axis=0), accuracy.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="labels", ylabel="test accuracy", title="Learning curves (mean, band: min to max over runs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def diagnostics_figure(run_dir: Path, path: Path) -> Path | None:
    """Rises and falls beyond noise, rank correlation with round 0, and filter regret, per K (`jal analyze`)."""
    analysis = store.read_analysis(run_dir)
    if analysis is None:
        return None
    rounds, by_k = np.asarray(analysis["rounds"]), analysis["by_mc_samples"]
    fig, (rise_ax, start_ax, rank_ax, regret_ax) = plt.subplots(1, 4, figsize=(21, 4.5))
    # Line styles say what a curve measures; colours say which K.
    entries = list(by_k.values())
    styles = {rise_ax: [("-", "rose")] + [("--", "fell")] * all("fall_fraction" in e for e in entries)}
    if all("rise_since_start" in e for e in entries):  # absent from older analyses
        styles[start_ax] = [("-", "rose"), ("--", "fell")]
    for k, entry in by_k.items():
        (line,) = rise_ax.plot(rounds[1:], entry["rise_fraction"], label=f"K={k}")
        color = line.get_color()
        if "fall_fraction" in entry:  # absent from older analyses
            rise_ax.plot(rounds[1:], entry["fall_fraction"], "--", color=color)
        if "rise_since_start" in entry:
            start_ax.plot(rounds, entry["rise_since_start"], color=color, label=f"K={k}")
            start_ax.plot(rounds, entry["fall_since_start"], "--", color=color)
        if "retrain_rise_fraction" in entry:  # with siblings only
            for ax in (rise_ax, start_ax):
                ax.plot(rounds, entry["retrain_rise_fraction"], "-.", color=color)
            rank_ax.plot(rounds, entry["retrain_rank_correlation"], "-.", color=color)
        rank_ax.plot(rounds, entry["rank_correlation"], color=color, label=f"K={k}")
        regret_ax.plot(analysis["filter_fractions"], entry["filter_regret"], marker="o", label=f"K={k}")
    recorded = analysis["recorded"]
    rank_ax.plot(np.arange(len(recorded["rank_correlation"])), recorded["rank_correlation"], "k:", label="recorded")
    regret_ax.plot(analysis["filter_fractions"], recorded["filter_regret"], "k:", marker="x", label="recorded")
    # A filter that removes at random removes the same share of what is later acquired.
    regret_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random filter")
    moved = f"beyond {analysis['z']} noise sd"
    rise_ax.set(xlabel="round", ylabel="fraction of samples", title=f"Scores that moved since the last round, {moved}")
    start_ax.set(xlabel="round", ylabel="fraction of samples", title=f"Scores that moved since round 0, {moved}")
    rank_ax.set(xlabel="round", ylabel="Spearman", title="Rank correlation with round 0")
    regret_ax.set(xlabel="fraction filtered at round 0", ylabel="share of acquired", title="Regret of early filtering")
    if analysis.get("retrained"):
        for ax in (rise_ax, start_ax):
            styles.setdefault(ax, []).append(("-.", "higher under a sibling"))
        styles[rank_ax] = [("-.", "model with its sibling")]
    for ax in (rise_ax, start_ax, rank_ax, regret_ax):
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="grey", linestyle=ls, label=text) for ls, text in styles.get(ax, [])]
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize="small")
    return _save(fig, path)


def filtering_figure(filter_dir: Path, path: Path) -> Path:
    """Test accuracy against the fraction of the pool removed: by lowest score and at random."""
    evaluations = store.read_filtering(filter_dir)
    estimator = _text(store.read_config(filter_dir)["estimator"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = [e for e in evaluations if e["fraction"] == 0]
    for removal, label in (("lowest", f"lowest {estimator} removed"), ("random", "random samples removed")):
        points = sorted([e for e in evaluations if e["removal"] == removal] + (full if removal == "random" else []),
                        key=lambda e: e["fraction"])  # fmt: skip
        if points:
            ax.plot([e["fraction"] for e in points], [e["test_accuracy"] for e in points], marker="o", label=label)
    ax.set(xlabel="fraction of the pool removed before training", ylabel="test accuracy", title="Data filtering")
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def check_directories(directories: list[Path]) -> None:
    """Raises a one-line JalError for anything in the directories that would keep their figures from being drawn."""
    names = [d.name for d in directories]
    if len(set(names)) < len(names):
        raise JalError("two directories share a name; their figures would overwrite each other: rename one")
    for directory in directories:
        store.check_directory(directory)
        if not store.is_filter_dir(directory):
            store.read_analysis(directory)


def write_figures(
    run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, progress=lambda figure, total: None
) -> list[Path]:
    """Every figure for the run (or `jal filter`) directories given; per-directory figures are named after it.

    Every directory is checked before anything is drawn, and the figures are drawn into a
    temporary folder, then moved into `out_dir`: a failure leaves `out_dir` as it was.
    `progress(name, total)` is told of each figure before it is drawn.
    """
    out_dir, directories = Path(out_dir), [Path(d) for d in run_dirs]
    check_directories(directories)
    with outputs.new_folder(out_dir) as folder:
        drawn = draw_figures(directories, folder, progress=progress)
    return [out_dir / path.relative_to(folder) for path in drawn]


def draw_figures(directories: list[Path], out_dir: Path, *, progress=lambda figure, total: None) -> list[Path]:
    """Draws every figure of `write_figures` into the folder `out_dir`, for directories `check_directories` passed."""
    run_dirs = [d for d in directories if not store.is_filter_dir(d)]
    total = 2 + bool(run_dirs) + len(directories) - len(run_dirs) + 2 * len(run_dirs)
    progress("informativeness curves", total)
    paths = list(informativeness_curve(out_dir))
    progress("selection animation", total)
    paths.append(selection_animation(out_dir))
    if run_dirs:
        progress("learning curves", total)
        paths.append(learning_curves(run_dirs, out_dir / "learning_curves.png"))
    for filter_dir in (d for d in directories if store.is_filter_dir(d)):
        filter_out = out_dir / filter_dir.name if len(directories) > 1 else out_dir
        filter_out.mkdir(exist_ok=True)
        progress(f"filtering of {filter_dir.name}", total)
        paths.append(filtering_figure(filter_dir, filter_out / "filtering.png"))
    for run_dir in run_dirs:
        run_out = out_dir / run_dir.name if len(directories) > 1 else out_dir
        run_out.mkdir(exist_ok=True)
        progress(f"score evolution of {run_dir.name}", total)
        paths.append(score_evolution_animation(run_dir, run_out))
        progress(f"diagnostics of {run_dir.name}", total)
        diagnostics = diagnostics_figure(run_dir, run_out / "diagnostics.png")
        if diagnostics is not None:
            paths.append(diagnostics)
    return paths


def run_label(run_dir: Path, config: dict) -> str:
    return _text(f"{run_dir.name} ({config['loop']['acquisition']})")


def _plot_sorted_scores(ax, run_dir: Path, rounds: int, label: str, split: str, color: str) -> None:
    """The first and the last of the `rounds` finished rounds' scores; later rows are rounds still to come."""
    scores = store.read_scores(run_dir, split)
    for round_, style in ((0, ":"), (rounds - 1, "-")):
        # Descending, as the reference's plot_scores draws them.
        ax.plot(-np.sort(-scores[round_]), style, color=color, label=f"{label}, round {round_}")


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Test accuracy against labels for every run, and sorted pool and test score curves.

    Returns:
      The path written.
    """
    out = Path(out)
    if out.suffix.lower() not in {".png", ".svg", ".pdf"}:
        raise JalError(f"`out` {out}: use a .png, .svg or .pdf file name")
    for run_dir in run_dirs:
        store.check_run_dir(run_dir)
    runs = [(Path(d), store.read_config(d), store.read_metrics(d)) for d in run_dirs]
    fig, (acc_ax, pool_ax, test_ax) = plt.subplots(1, 3, figsize=(18, 5))
    for run_dir, config, metrics in runs:
        label = run_label(run_dir, config)
        labels, accuracy = [m["num_labeled"] for m in metrics], [m["test_accuracy"] for m in metrics]
        (line,) = acc_ax.plot(labels, accuracy, marker=".", label=label)
        _plot_sorted_scores(pool_ax, run_dir, len(metrics), label, "pool", line.get_color())
        if (run_dir / store.TEST_SCORES).exists():
            _plot_sorted_scores(test_ax, run_dir, len(metrics), label, "test", line.get_color())
    acc_ax.set(xlabel="number of labels", ylabel="test accuracy", title="Test accuracy")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()
    score_name = _text(runs[0][1]["record"]["score_name"])
    for ax, split in ((pool_ax, "pool"), (test_ax, "test")):
        ax.set(xlabel=f"{split} samples, sorted by score", ylabel=score_name, title=f"Sorted {split} scores")
        if ax.lines:
            ax.legend(fontsize="small")
    try:
        with outputs.new_file(out) as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=120, format=out.suffix[1:].lower())
    finally:
        plt.close(fig)
    return out
