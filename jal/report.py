"""`jal report`: one self-contained HTML page of runs, filtering results, diagnostics and figures; the analysis table.

Every figure of `jal figures` is embedded (base64 data URIs), so the page is one file to
send or open anywhere, with no network access and nothing beside it.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np

from jal import outputs, store
from jal.errors import JalError
from jal.figures import check_directories, draw_figures

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
"""
THRESHOLDS = (0.90, 0.95)


def labels_to_reach(metrics: list[dict], threshold: float) -> int | None:
    """The first label count at which test accuracy reached `threshold` (None: never)."""
    return next((m["num_labeled"] for m in metrics if m["test_accuracy"] >= threshold), None)


def _mean(values, digits: int = 4) -> str:
    """The mean of a per-round list as text; "-" where absent (no sibling, one round)."""
    return f"{np.mean(values):.{digits}f}" if values else "-"


def _since_start(entry: dict, last: int) -> str:
    if "rise_since_start" not in entry:  # absent from older analyses
        return "-"
    return f"{entry['rise_since_start'][last]:.4f}, {entry['fall_since_start'][last]:.4f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The summary of `analyze`'s result: a header and one row per K, plus the recorded history."""
    last = len(result["rounds"]) - 1
    middle = last // 2
    header = [
        "K",
        "noise sd (median)",
        "score (median)",
        "rises (mean, max)",
        "falls (mean)",
        "rises on retraining (mean)",
        f"since r0 at r{result['rounds'][last]}: rises, falls",
        f"Spearman r{result['rounds'][middle]}",
        f"Spearman r{result['rounds'][last]}",
        "Spearman with sibling (mean)",
        *(f"regret {f:.0%}" for f in result["filter_fractions"]),
    ]
    rows = []
    for k, entry in result["by_mc_samples"].items():
        rises = entry["rise_fraction"]
        rank = entry["rank_correlation"]
        rows.append(
            [
                k,
                f"{entry['median_noise_sd']:.4f}",
                f"{entry['median_score']:.4f}",
                f"{_mean(rises)}, {max(rises):.4f}" if rises else "-",
                _mean(entry.get("fall_fraction")),
                _mean(entry.get("retrain_rise_fraction")),
                _since_start(entry, last),
                f"{rank[middle]:.3f}",
                f"{rank[last]:.3f}",
                _mean(entry.get("retrain_rank_correlation"), 3),
                *(f"{x:.3f}" for x in entry["filter_regret"]),
            ]
        )
    recorded = result["recorded"]
    rows.append(
        [
            f"recorded (K={result['run_mc_samples']}, whole pool)",
            *["-"] * 6,
            f"{recorded['rank_correlation'][result['rounds'][middle]]:.3f}",
            f"{recorded['rank_correlation'][result['rounds'][last]]:.3f}",
            "-",
            *(f"{x:.3f}" for x in recorded["filter_regret"]),
        ]
    )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table(result: dict) -> str:
    """The terminal summary of `analyze`'s result, as a Markdown table."""
    return markdown_table(*table_rows(result))


def _table(header, rows, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(path: Path, caption: str) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(caption)
    return f'<figure><img alt="{caption}" src="data:{mime};base64,{data}"><figcaption>{caption}</figcaption></figure>'


def runs_rows(run_dirs: list[Path]) -> tuple[list[str], list[list]]:
    """The table of runs: a header, and one row per run (with a finished round: `store.check_run_dir`)."""
    header = ["run", "model", "acquisition", "K", "labels", "final test accuracy", "final NLL",
              *(f"labels to {t:.0%}" for t in THRESHOLDS), "median s/round"]  # fmt: skip
    rows = []
    for run_dir in run_dirs:
        config, metrics = store.read_config(run_dir), store.read_metrics(run_dir)
        last = metrics[-1]
        reach = [labels_to_reach(metrics, t) for t in THRESHOLDS]
        seconds = [m["seconds"] for m in metrics[1:]] or [metrics[0]["seconds"]]
        rows.append(
            [run_dir.name, config["model"]["name"], config["loop"]["acquisition"], config["loop"]["mc_samples"],
             last["num_labeled"],
             f"{last['test_accuracy']:.4f}", f"{last['test_nll']:.4f}",
             *("not reached" if n is None else n for n in reach), f"{np.median(seconds):.1f}"]
        )  # fmt: skip
    return header, rows


def filtering_rows(filter_dir: Path) -> tuple[list[str], list[list]]:
    """The table of a `jal filter` directory: a header, and one row per evaluation."""
    rows = [[f"{e['fraction']:.0%}", e["removal"], e["num_kept"], f"{e['test_accuracy']:.4f}", f"{e['test_nll']:.4f}"]
            for e in store.read_filtering(filter_dir)]  # fmt: skip
    return ["removed", "by", "kept", "test accuracy", "test NLL"], rows


def build_report(directories: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Writes the report of run and `jal filter` directories to `out` (an .html file).

    Every directory is checked before anything is drawn, and the page is written whole or
    not at all (`jal.outputs`).
    """
    out = Path(out)
    if out.suffix.lower() not in {".html", ".htm"}:
        raise JalError(f"`out` {out}: use an .html file name")
    directories = [Path(d) for d in directories]
    check_directories(directories)
    with outputs.new_file(out) as tmp_out:  # its folder is made first: a place that cannot be is refused early
        try:
            with tempfile.TemporaryDirectory(prefix="jal-report-") as tmp:
                page = _page(directories, Path(tmp))
        except OSError as e:
            raise JalError(f"cannot draw the figures in a temporary folder ({e}); free space or set TMPDIR") from e
        tmp_out.write_text(page, encoding="utf-8")
    return out


def _page(directories: list[Path], figures: Path) -> str:
    """The report's HTML, its figures drawn into the folder `figures` and embedded."""
    draw_figures(directories, figures)
    run_dirs = [d for d in directories if not store.is_filter_dir(d)]
    filter_dirs = [d for d in directories if store.is_filter_dir(d)]
    many = len(directories) > 1
    parts = ["<h1>jal report</h1>"]
    if run_dirs:
        parts += ["<h2>Active learning runs</h2>", _table(*runs_rows(run_dirs), "runs")]
        parts.append(_image(figures / "learning_curves.png", "Test accuracy against labels (mean and range over runs)"))
    for run_dir in run_dirs:
        where = figures / run_dir.name if many else figures
        parts.append(f"<h2>{html.escape(run_dir.name)}</h2>")
        parts.append(_image(where / "score_evolution_ema.gif", f"{run_dir.name}: score evolution (EMA 0.9)"))
        analysis = store.read_analysis(run_dir)
        if analysis is not None:
            parts.append("<h3>Submodularity diagnostics</h3>")
            parts.append(
                f"<p>{analysis['subset_size']} pool samples re-scored {analysis['repeats']} times per round; "
                f"a rise (or fall) counts beyond {analysis['z']} noise standard deviations; regret: the share of "
                "acquired samples a filter on round-0 scores would have removed (a random filter: the fraction "
                "itself); a sibling: a model trained again on the round's labels with other random numbers.</p>"
            )
            parts.append(_table(*table_rows(analysis), f"analysis-{run_dir.name}"))
            parts.append(_image(where / "diagnostics.png", f"{run_dir.name}: diagnostics"))
    for filter_dir in filter_dirs:
        where = figures / filter_dir.name if many else figures
        parts.append(f"<h2>Data filtering: {html.escape(filter_dir.name)}</h2>")
        parts.append(_table(*filtering_rows(filter_dir), f"filtering-{filter_dir.name}"))
        parts.append(_image(where / "filtering.png", f"{filter_dir.name}: test accuracy against fraction removed"))
    parts.append("<h2>Active learning and data filtering, illustrated</h2>")
    parts.append(_image(figures / "active_vs_filtering_xkcd.png", "Where data filtering and active learning act"))
    parts.append(_image(figures / "active_selection_animation.gif", "Simulated top-1 active selection"))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>jal report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
