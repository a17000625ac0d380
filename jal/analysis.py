"""`jal analyze`: submodularity diagnostics of a run, with the MC noise measured, not assumed.

Every round's model is in the run directory, so a subset of the pool is re-scored with
fresh dropout keys, `repeats` times per round and K: the spread of the repeats, pooled
over samples of similar score (`jal.diagnostics.pooled_noise_sd`), is the MC noise of a
score, the rise test (`jal.diagnostics.rise_fractions`) uses it, and the
mean of the repeats is a less noisy history to compute rank correlations from. Larger K
shows how much of what looks like rising informativeness is estimation noise.

MC noise is not the only noise: every round trains a fresh model, and a model trained
again on the same labels scores differently. Each re-scored round's model therefore gets a
sibling, trained on its labels with other random numbers and re-scored alike; how often a
sibling scores a sample higher (`jal.diagnostics.retrain_rises`) is the rate of rises that
retraining alone makes, and the rank correlation of model and sibling is how far
retraining alone unsettles the ranking.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jal import diagnostics
from jal.data import normalize
from jal.errors import JalError
from jal.estimators import ESTIMATORS
from jal.filtering import fit
from jal.scoring import score_pool
from jal.store import read_config, read_metrics, read_model, read_scores
from jal.train import train_config_from

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
    pool_labels: np.ndarray | None = None,
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
      pool_labels: [P] the pool's labels. When given (`jal analyze` gives them unless
        --no-retrain), every re-scored round's model gets a sibling trained on the same
        labels with other random numbers, re-scored alike: the score changes that
        retraining alone makes, to hold the rises between rounds against.
      mc_samples: the K values to re-score at.
      repeats: independent re-scorings per round and K (at least 2, to measure noise).
      subset: how many pool samples to re-score (chosen at random, fixed over rounds).
      every: re-score every `every`-th finished round (rises are between consecutive ones).
      z: a rise counts when it exceeds z noise standard deviations.
      seed: of the subset, the dropout keys and the siblings' training.
    """
    if repeats < 2 or subset < 2 or every < 1 or not mc_samples or min(mc_samples) < 1:
        raise JalError("--repeats and --subset must be at least 2, --every and each K at least 1")
    config, metrics, history, labeled = read_history(run_dir)
    score_name = config.get("score_name", config.get("acquisition"))
    if score_name not in ESTIMATORS:
        raise JalError(f"{run_dir}: its {score_name!r} scores cannot be recomputed one sample at a time")
    pool_size = history.shape[1]
    if len(pool_images) != pool_size or (pool_labels is not None and len(pool_labels) != pool_size):
        raise JalError(f"{len(pool_images)} pool images for a run over {pool_size}; is this the run's data?")
    acquired = np.concatenate([np.asarray(m["acquired"], int) for m in metrics])
    rounds = np.arange(0, len(metrics), every)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool_size, min(subset, pool_size), replace=False))
    images = np.asarray(pool_images)[chosen]
    subset_labeled = labeled[rounds][:, chosen]
    # Separate roots, so that no key is both a parent and a sibling of another's stream.
    key, initial_key, train_key, sibling_key = jax.random.split(jax.random.key(seed), 4)

    models = {int(r): read_model(run_dir, int(r)) for r in rounds}
    siblings = {}
    if pool_labels is not None:
        pool = np.asarray(pool_images)
        pool = jnp.asarray(normalize(pool) if pool.dtype == np.uint8 else pool)
        train_config = train_config_from(config)
        for r in models:
            progress(f"retraining round {r}")
            round_key = jax.random.fold_in(train_key, r)
            siblings[r] = fit(round_key, pool, np.asarray(pool_labels), np.flatnonzero(labeled[r]), train_config)

    def rescore(params_by_round: dict, k: int, stream: jax.Array, name: str):
        """Mean scores [R, S] over the repeats, and the MC noise sd of that mean."""
        rescored = np.empty((len(rounds), repeats, len(chosen)), np.float32)
        for i, (r, params) in enumerate(params_by_round.items()):
            progress(f"K={k}: {name} round {r}")
            for j in range(repeats):
                round_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(stream, k), r), j)
                rescored[i, j] = score_pool(params, images, key=round_key, method=score_name, num_samples=k)
        mean = rescored.mean(axis=1)
        single_sd = diagnostics.pooled_noise_sd(mean, rescored.var(axis=1, ddof=1))  # of one score estimate
        return mean, single_sd, single_sd / np.sqrt(repeats)

    result = {
        "run_dir": str(run_dir),
        "score": score_name,
        "run_mc_samples": config.get("mc_samples"),
        "seed": seed,
        "rounds": rounds.tolist(),
        "subset_size": len(chosen),
        "repeats": repeats,
        "z": z,
        "retrained": bool(siblings),
        "filter_fractions": list(FRACTIONS),
        "recorded": {
            "rank_correlation": diagnostics.rank_correlations(history, labeled).tolist(),
            "filter_regret": diagnostics.filter_regret(history[0], labeled[0], acquired, FRACTIONS).tolist(),
        },
        "by_mc_samples": {},
    }
    for k in mc_samples:
        mean, single_sd, mean_sd = rescore(models, k, key, "model")
        initial_full = score_pool(models[0], pool_images, key=initial_key, method=score_name, num_samples=k)
        entry = {
            "median_noise_sd": float(np.median(single_sd)),
            "median_score": float(np.median(mean)),
            "rise_fraction": diagnostics.rise_fractions(mean, subset_labeled, mean_sd, z).tolist(),
            "fall_fraction": diagnostics.fall_fractions(mean, subset_labeled, mean_sd, z).tolist(),
            "rise_since_start": diagnostics.rises_since_start(mean, subset_labeled, mean_sd, z).tolist(),
            "fall_since_start": diagnostics.rises_since_start(-mean, subset_labeled, mean_sd, z).tolist(),
            "rank_correlation": diagnostics.rank_correlations(mean, subset_labeled).tolist(),
            "filter_regret": diagnostics.filter_regret(initial_full, labeled[0], acquired, FRACTIONS).tolist(),
        }
        if siblings:
            sibling_mean, _, sibling_sd = rescore(siblings, k, sibling_key, "sibling")
            entry["retrain_rise_fraction"] = diagnostics.retrain_rises(
                mean, sibling_mean, subset_labeled, mean_sd, sibling_sd, z
            ).tolist()
            entry["retrain_rank_correlation"] = [
                diagnostics.spearman(mean[i, ~subset_labeled[i]], sibling_mean[i, ~subset_labeled[i]])
                for i in range(len(rounds))
            ]
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
