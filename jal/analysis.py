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

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jal import diagnostics, store
from jal.acquire import check_estimator
from jal.acquire.estimators import ESTIMATORS
from jal.data import Normalization
from jal.errors import JalError
from jal.filtering import fit
from jal.models import Model
from jal.scoring import score_pool
from jal.train import TrainConfig

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def analyze(
    run_dir: str | os.PathLike,
    model: Model,
    pool_inputs,
    *,
    normalization: Normalization,
    pool_labels: np.ndarray | None = None,
    train_config: TrainConfig | None = None,
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
      model: the run's model (`jal.models`).
      pool_inputs: [P, *input_shape] the run's pool, raw (host array or memmap).
      normalization: the dataset's (`jal.data.Dataset.normalization`).
      pool_labels: [P] the pool's labels. When given (`jal analyze` gives them unless
        --no-retrain), every re-scored round's model gets a sibling trained on the same
        labels with other random numbers, re-scored alike: the score changes that
        retraining alone makes, to hold the rises between rounds against.
      train_config: the run's training settings, for the siblings (default: `TrainConfig()`).
      mc_samples: the K values to re-score at.
      repeats: independent re-scorings per round and K (at least 2, to measure noise).
      subset: how many pool samples to re-score (chosen at random, fixed over rounds).
      every: re-score every `every`-th finished round (rises are between consecutive ones).
      z: a rise counts when it exceeds z noise standard deviations.
      seed: of the subset, the dropout keys and the siblings' training.
    """
    if repeats < 2 or subset < 2 or every < 1 or not mc_samples or min(mc_samples) < 1:
        raise JalError("`repeats` and `subset` must be at least 2, `every` and each K at least 1")
    store.check_run_dir(run_dir)  # a damaged run is refused before any model is re-scored
    config, metrics, history, labeled = store.read_history(run_dir)
    score_name = config["record"]["score_name"]
    if score_name not in ESTIMATORS:
        raise JalError(f"{run_dir}: its {score_name!r} scores cannot be recomputed one sample at a time")
    for k in mc_samples:  # before any sibling trains
        check_estimator(score_name, k)
    pool_size = history.shape[1]
    if len(pool_inputs) != pool_size or (pool_labels is not None and len(pool_labels) != pool_size):
        raise JalError(f"{len(pool_inputs)} pool inputs for a run over {pool_size}; is this the run's data?")
    acquired = np.concatenate([np.asarray(m["acquired"], int) for m in metrics])
    rounds = np.arange(0, len(metrics), every)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool_size, min(subset, pool_size), replace=False))
    inputs = np.asarray(pool_inputs[chosen])
    subset_labeled = labeled[rounds][:, chosen]
    # Separate roots, so that no key is both a parent and a sibling of another's stream.
    key, initial_key, train_key, sibling_key = jax.random.split(jax.random.key(seed), 4)
    score = functools.partial(score_pool, model, estimator=score_name, normalization=normalization)

    template = model.init(jax.random.key(0))
    models = {int(r): store.read_model(run_dir, int(r), template) for r in rounds}
    siblings = {}
    if pool_labels is not None:
        pool = jnp.asarray(normalization.apply(np.asarray(pool_inputs)))
        for r in models:
            progress(f"retraining round {r}")
            round_key = jax.random.fold_in(train_key, r)
            kept = np.flatnonzero(labeled[r])
            siblings[r] = fit(round_key, model, pool, np.asarray(pool_labels), kept, train_config or TrainConfig())

    def rescore(params_by_round: dict, k: int, stream: jax.Array, name: str):
        """Mean scores [R, S] over the repeats, and the MC noise sd of that mean."""
        rescored = np.empty((len(rounds), repeats, len(chosen)), np.float32)
        for i, (r, params) in enumerate(params_by_round.items()):
            progress(f"K={k}: {name} round {r}")
            for j in range(repeats):
                round_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(stream, k), r), j)
                rescored[i, j] = score(params, inputs, key=round_key, mc_samples=k)
        mean = rescored.mean(axis=1)
        single_sd = diagnostics.pooled_noise_sd(mean, rescored.var(axis=1, ddof=1))  # of one score estimate
        return mean, single_sd, single_sd / np.sqrt(repeats)

    result = {
        "run_dir": str(run_dir),
        "score": score_name,
        "run_mc_samples": config["loop"]["mc_samples"],
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
        initial_full = score(models[0], pool_inputs, key=initial_key, mc_samples=k)
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
        if k == config["loop"]["mc_samples"]:
            # The recorded history itself, against the noise of one estimate at its K.
            recorded = history[rounds][:, chosen]
            entry["recorded_rise_fraction"] = diagnostics.rise_fractions(
                recorded, subset_labeled, single_sd, z
            ).tolist()
        result["by_mc_samples"][str(k)] = entry

    store.write_analysis(run_dir, result)
    return result
