"""The recipes behind `jal run` and `jal filter`: a config in, a directory of results out.

    from jal.config import RunConfig
    from jal.experiment import run
    run(RunConfig(iterations=10), "runs/bald")

Everything that can fail on bad input (data, settings, the output folder) is checked
before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jal import analysis, loop, store
from jal.config import FilterConfig, RunConfig, from_json, to_json
from jal.data import DataConfig, Dataset, load_dataset, make_pool
from jal.errors import JalError
from jal.filtering import filter_curve, fit, kept_indices, score_all
from jal.models import Model


class Pool(NamedTuple):
    """A dataset, the pool drawn from its training split, and the loop's device arrays."""

    dataset: Dataset
    indices: np.ndarray  # [P] into the training split
    labels: np.ndarray  # [P] int32
    data: loop.Data


def load_pool(config: DataConfig) -> Pool:
    """The dataset `config` names, its pool, normalised onto the device."""
    dataset = load_dataset(config)
    indices = make_pool(len(dataset.x_train), config.pool_size, seed=config.pool_seed)
    normalize = dataset.normalization.apply
    data = loop.Data(
        jnp.asarray(normalize(dataset.x_train[indices])),
        jnp.asarray(normalize(dataset.x_test)),
        jnp.asarray(dataset.y_test),
    )
    return Pool(dataset, indices, dataset.y_train[indices], data)


def record(pool: Pool, model: Model, **facts) -> dict:
    """What a run's settings resolved to, for config.json's "record"."""
    return {
        "data": pool.dataset.source,
        "input_shape": list(pool.dataset.input_shape),
        "num_classes": pool.dataset.num_classes,
        "pool_size": len(pool.indices),
        "model": model.resolved_settings(),
        **facts,
        "backend": jax.default_backend(),
        "versions": store.versions(),
    }


def run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    on_start: Callable[[int], None] = lambda rounds: None,
    on_round: Callable[[dict], None] = lambda metrics: None,
) -> Path:
    """An active-learning experiment: `config.iterations` rounds of train, score, acquire, then a last evaluation.

    Writes the run directory `out` as it goes (`jal.store`). Once every input is checked,
    `on_start` gets the number of rounds; `on_round` then sees each round's metrics.
    """
    store.check_new_directory(out)
    pool = load_pool(config.data)
    model = config.model.build(pool.dataset.input_shape, pool.dataset.num_classes)
    loop_config = config.loop._replace(model=model)
    loop.check_config(loop_config)
    if (config.initial is None) == (config.initial_per_class is None):
        raise JalError("give one of `initial` and `initial_per_class`")
    if config.initial_per_class:
        initial = loop.balanced_initial_indices(
            pool.labels, config.initial_per_class, config.seed, num_classes=model.num_classes
        )
        num_initial = len(initial)
    else:
        initial, num_initial = loop.initial_indices(len(pool.labels), config.initial, config.seed), config.initial
    loop.check_settings(len(pool.labels), num_initial, loop_config.acquire, config.iterations)

    indices, labels, data = pool.indices, pool.labels, pool.data
    if config.filter_fraction > 0:
        # Offline filtering first: a model trained on the initial labels scores the pool once,
        # and the lowest-scoring fraction of the unlabeled samples leaves the pool.
        fit_key, score_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1))
        params = fit(fit_key, model, data.pool_inputs, labels, initial, loop_config.train)
        scores = score_all(
            score_key, model, params, data.pool_inputs, config.filter_estimator, mc_samples=loop_config.mc_samples
        )
        kept = kept_indices(scores, config.filter_fraction, protected=initial)
        loop.check_settings(len(kept), len(initial), loop_config.acquire, config.iterations)
        indices, labels = indices[kept], labels[kept]
        data = data._replace(pool_inputs=data.pool_inputs[kept])
        initial = np.searchsorted(kept, initial)  # the same samples, renumbered in the kept pool
    oracle = loop.dataset_oracle(labels)
    state = loop.init(jax.random.key(config.seed), len(labels), initial, oracle(initial), num_classes=model.num_classes)

    facts = record(
        pool,
        model,
        filtered_pool_size=len(indices),
        initial_indices=[int(i) for i in initial],
        score_name=loop_config.score_name,
        consistent_masks=loop_config.consistent_masks,
    )
    rounds = config.iterations + 1
    test_size = len(pool.dataset.x_test) if loop_config.score_test else 0
    model_size = sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0))))
    writer = store.RunWriter(
        out,
        {**to_json(config), "record": facts},
        pool_indices=indices,
        rounds=rounds,
        test_size=test_size,
        model_size=model_size,
    )
    on_start(rounds)
    last = time.perf_counter()

    def write(info) -> None:
        nonlocal last
        now = time.perf_counter()
        on_round(writer.append(info, now - last))
        last = now

    try:
        loop.run(state, data, loop_config, oracle, iterations=config.iterations, callback=write)
    except KeyboardInterrupt:
        raise JalError(f"interrupted; the {writer.round} finished rounds are in {writer.run_dir}") from None
    finally:
        writer.close()
    return writer.run_dir


def filter_pool(
    config: FilterConfig, out: str | os.PathLike, *, on_result: Callable[[dict], None] = lambda evaluation: None
) -> Path:
    """Offline data filtering: test accuracy after removing the lowest-scoring fractions of the pool, and random ones.

    A model trained on `config.initial` pool samples (or `config.held_out` training inputs
    outside the pool) scores the pool once; for each fraction, a fresh model trains on what
    is kept. Writes a filter directory (`jal.store`); `on_result` sees each evaluation.
    """
    store.check_new_directory(out)
    pool = load_pool(config.data)
    dataset = pool.dataset
    model = config.model.build(dataset.input_shape, dataset.num_classes)
    fit_key, score_key, curve_key = jax.random.split(jax.random.key(config.seed), 3)
    if config.held_out:
        outside = np.setdiff1d(np.arange(len(dataset.x_train)), pool.indices)
        if config.held_out > len(outside):
            raise JalError(f"`held_out` {config.held_out}: only {len(outside)} training inputs lie outside the pool")
        scoring_set = np.sort(np.random.RandomState(config.seed).choice(outside, config.held_out, replace=False))
        inputs = jnp.asarray(dataset.normalization.apply(dataset.x_train[scoring_set]))
        params = fit(fit_key, model, inputs, dataset.y_train[scoring_set], np.arange(len(scoring_set)), config.train)
        protected = np.zeros(0, int)
    else:
        if config.initial > len(pool.indices):
            raise JalError(f"`initial` {config.initial} must be at most the pool size {len(pool.indices)}")
        protected = loop.initial_indices(len(pool.indices), config.initial, config.seed)
        scoring_set = pool.indices[protected]
        params = fit(fit_key, model, pool.data.pool_inputs, pool.labels, protected, config.train)
    scores = score_all(score_key, model, params, pool.data.pool_inputs, config.estimator, mc_samples=config.mc_samples)

    out = Path(out)
    facts = record(pool, model, scoring_set=[int(i) for i in scoring_set])
    with store.new_directory(out):
        store.write_json(out / store.CONFIG, {**to_json(config), "record": facts})
        np.save(out / store.POOL_INDICES, pool.indices)
        np.save(out / store.FILTER_SCORES, scores)
        (out / store.FILTERING).touch()

    def write(evaluation) -> None:
        store.append_filtering(out, evaluation._asdict())
        on_result(evaluation._asdict())

    filter_curve(
        curve_key,
        model,
        pool.data,
        pool.labels,
        scores,
        protected=protected,
        fractions=config.fractions,
        config=config.train,
        mc_samples=config.mc_samples,
        seed=config.seed,
        on_result=write,
    )
    return out


def analyze_run(run_dir: str | os.PathLike, *, sources: dict | None = None, retrain: bool = True, **options) -> dict:
    """`jal.analysis.analyze` of a run directory, with the run's data and model.

    Args:
      run_dir: a `jal run` directory.
      sources: `jal.data.DataConfig` source fields (path, mnist_dir, tfds, tfds_data_dir)
        that replace the run's, where its data now lies elsewhere.
      retrain: train a sibling of every re-scored round's model (`analyze`'s pool_labels).
      options: `analyze`'s keyword arguments.
    """
    saved = store.read_config(run_dir)
    config = from_json(RunConfig, {k: v for k, v in saved.items() if k != "record"}, f"{run_dir}/{store.CONFIG}")
    data = config.data
    if sources:
        data = dataclasses.replace(data, **{**dict.fromkeys(DataConfig.SOURCES), **sources})
    dataset = load_dataset(data)
    pool_indices = store.read_pool_indices(run_dir)
    if pool_indices.max(initial=0) >= len(dataset.x_train):
        raise JalError(f"{run_dir}: its pool indices exceed the {len(dataset.x_train)} training inputs given")
    model = config.model.build(dataset.input_shape, saved["record"]["num_classes"])
    return analysis.analyze(
        run_dir,
        model,
        dataset.x_train[pool_indices],
        normalization=dataset.normalization,
        pool_labels=dataset.y_train[pool_indices] if retrain else None,
        train_config=config.loop.train,
        **options,
    )
