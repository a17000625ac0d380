"""`jal analyze`: submodularity diagnostics of a run, with the MC noise measured, not assumed.

Every round's model is in the run directory, so a subset of the pool is re-scored with
fresh dropout keys, `repeats` times per round and K: the spread of the repeats, pooled
over samples of similar score (`jal.diagnostics.pooled_noise_sd`), is the MC noise of a
score, the rise test (`jal.diagnostics.rise_fractions`) uses it, and the
mean of the repeats is a less noisy history to compute rank correlations from. Larger K
shows how much of what looks like rising informativeness is estimation noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from jal import diagnostics
from jal.errors import JalError
from jal.estimators import ESTIMATORS
from jal.scoring import score_pool
from jal.store import read_config, read_metrics, read_model, read_scores

ANALYSIS = "analysis.json"
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def read_history(run_dir: str | os.PathLike) -> tuple[dict, list[dict], np.ndarray, np.ndarray]:
    """A run's config, its finished rounds' metrics, their pool scores [R, P] and labeled masks [R, P]."""
    config, metrics = read_config(run_dir), read_metrics(run_dir)
    if not metrics:
        raise JalError(f"{run_dir}: no finished round yet")
    history = np.asarray(read_scores(run_dir, "pool"))[: len(metrics)]
    labeled = diagnostics.labeled_by_round(
        history.shape[1], config["initial_indices"], [m["acquired"] for m in metrics]
    )
    return config, metrics, history, labeled


def analyze(
    run_dir: str | os.PathLike,
    pool_images: np.ndarray,
    *,
    mc_samples: tuple[int, ...] = (32, 128),
    repeats: int = 2,
    subset: int = 1000,
    every: int = 1,
    z: float = 2.0,
    seed: int = 0,
    progress=lambda message: None,
) -> dict:
    """Diagnostics of one run directory; also written to RUN_DIR/analysis.json.

    Args:
      run_dir: a finished or interrupted `jal run` directory.
      pool_images: [P, 28, 28] uint8 or [P, 28, 28, 1] float32 normalised: the run's pool.
      mc_samples: the K values to re-score at.
      repeats: independent re-scorings per round and K (at least 2, to measure noise).
      subset: how many pool samples to re-score (chosen at random, fixed over rounds).
      every: re-score every `every`-th finished round (rises are between consecutive ones).
      z: a rise counts when it exceeds z noise standard deviations.
      seed: of the subset and the dropout keys.
    """
    if repeats < 2 or subset < 2 or every < 1 or not mc_samples or min(mc_samples) < 1:
        raise JalError("--repeats and --subset must be at least 2, --every and each K at least 1")
    config, metrics, history, labeled = read_history(run_dir)
    score_name = config.get("score_name", config.get("acquisition"))
    if score_name not in ESTIMATORS:
        raise JalError(f"{run_dir}: its {score_name!r} scores cannot be recomputed one sample at a time")
    pool_size = history.shape[1]
    if len(pool_images) != pool_size:
        raise JalError(f"{len(pool_images)} pool images for a run over {pool_size}; is this the run's data?")
    acquired = np.concatenate([np.asarray(m["acquired"], int) for m in metrics])
    rounds = np.arange(0, len(metrics), every)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool_size, min(subset, pool_size), replace=False))
    images = np.asarray(pool_images)[chosen]
    key = jax.random.key(seed)

    result = {
        "run_dir": str(run_dir),
        "score": score_name,
        "run_mc_samples": config.get("mc_samples"),
        "rounds": rounds.tolist(),
        "subset_size": len(chosen),
        "repeats": repeats,
        "z": z,
        "filter_fractions": list(FRACTIONS),
        "recorded": {
            "rank_correlation": diagnostics.rank_correlations(history, labeled).tolist(),
            "filter_regret": diagnostics.filter_regret(history[0], labeled[0], acquired, FRACTIONS).tolist(),
        },
        "by_mc_samples": {},
    }
    for k in mc_samples:
        rescored = np.empty((len(rounds), repeats, len(chosen)), np.float32)
        for i, r in enumerate(rounds):
            progress(f"K={k}: round {r}")
            params = read_model(run_dir, int(r))
            for j in range(repeats):
                round_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, k), int(r)), j)
                rescored[i, j] = score_pool(params, images, key=round_key, method=score_name, num_samples=k)
        mean = rescored.mean(axis=1)
        single_sd = diagnostics.pooled_noise_sd(mean, rescored.var(axis=1, ddof=1))  # of one score estimate
        mean_sd = single_sd / np.sqrt(repeats)
        subset_labeled = labeled[rounds][:, chosen]
        initial_full = score_pool(read_model(run_dir, 0), pool_images, key=key, method=score_name, num_samples=k)
        entry = {
            "median_noise_sd": float(np.median(single_sd)),
            "median_score": float(np.median(mean)),
            "rise_fraction": diagnostics.rise_fractions(mean, subset_labeled, mean_sd, z).tolist(),
            "rank_correlation": diagnostics.rank_correlations(mean, subset_labeled).tolist(),
            "filter_regret": diagnostics.filter_regret(initial_full, labeled[0], acquired, FRACTIONS).tolist(),
        }
        if k == config.get("mc_samples"):
            # The recorded history itself, against the noise of one estimate at its K.
            recorded = history[rounds][:, chosen]
            entry["recorded_rise_fraction"] = diagnostics.rise_fractions(
                recorded, subset_labeled, single_sd, z
            ).tolist()
        result["by_mc_samples"][str(k)] = entry

    path = Path(run_dir) / ANALYSIS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return result


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The summary of `analyze`'s result: a header and one row per K, plus the recorded history."""
    last = len(result["rounds"]) - 1
    middle = last // 2
    header = [
        "K",
        "noise sd (median)",
        "score (median)",
        "rises (mean, max)",
        f"Spearman r{result['rounds'][middle]}",
        f"Spearman r{result['rounds'][last]}",
        *(f"regret {f:.0%}" for f in result["filter_fractions"]),
    ]
    rows = []
    for k, entry in result["by_mc_samples"].items():
        rises = np.asarray(entry["rise_fraction"]) if entry["rise_fraction"] else np.zeros(1)
        rank = entry["rank_correlation"]
        rows.append(
            [
                k,
                f"{entry['median_noise_sd']:.4f}",
                f"{entry['median_score']:.4f}",
                f"{rises.mean():.4f}, {rises.max():.4f}",
                f"{rank[middle]:.3f}",
                f"{rank[last]:.3f}",
                *(f"{x:.3f}" for x in entry["filter_regret"]),
            ]
        )
    recorded = result["recorded"]
    rows.append(
        [
            f"recorded (K={result['run_mc_samples']}, whole pool)",
            "-",
            "-",
            "-",
            f"{recorded['rank_correlation'][result['rounds'][middle]]:.3f}",
            f"{recorded['rank_correlation'][result['rounds'][last]]:.3f}",
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
