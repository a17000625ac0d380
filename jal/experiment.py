"""The recipes behind `jal run` and `jal filter`: a config in, a directory of results out.

    from jal.config import RunConfig
    from jal.experiment import run
    run(RunConfig(iterations=10), "runs/bald")

Everything that can fail on bad input (data, settings, the output folder) is checked
before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jal import analysis, distributed, loop, resources, sharding, stopping, store, streamed, workdir
from jal.acquire import check_estimator
from jal.config import FilterConfig, RunConfig, from_json, to_json
from jal.data import DataConfig, Dataset, load_dataset, make_pool
from jal.data.host import PoolRows
from jal.errors import JalError
from jal.filtering import filter_curve, fit, kept_indices, score_all
from jal.models import Model


class Pool(NamedTuple):
    """A dataset, the pool drawn from its training split, and the loop's data."""

    dataset: Dataset
    indices: np.ndarray  # [P] into the training split
    labels: np.ndarray  # [P] int32
    data: loop.Data | streamed.HostData


def load_pool(config: DataConfig, *, stream: bool = False, mesh: Mesh | None = None) -> Pool:
    """The dataset `config` names and its pool, normalised onto the device, or with `stream` left on the host.

    With `mesh`, the pool's rows are split over its devices, and each process reads and
    normalises only those its own devices hold (`jal.sharding.spread`).
    """
    dataset = load_dataset(config)
    indices = make_pool(len(dataset.x_train), config.pool_size, seed=config.pool_seed)
    normalize = dataset.normalization.apply
    test = (jnp.asarray(normalize(dataset.x_test)), jnp.asarray(dataset.y_test))
    if stream:  # read where it lies (a memmap for .npy files), a batch at a time (`jal.streamed`)
        data = streamed.HostData(PoolRows(dataset.x_train, indices), *test, normalization=dataset.normalization)
    elif mesh is not None:
        data = loop.Data(sharding.spread(PoolRows(dataset.x_train, indices), mesh, prepare=normalize), *test)
    else:
        data = loop.Data(jnp.asarray(normalize(dataset.x_train[indices])), *test)
    return Pool(dataset, indices, dataset.y_train[indices], data)


def record(pool: Pool, model: Model, mesh: Mesh | None = None, **facts) -> dict:
    """What a run's settings resolved to, for config.json's "record" (`mesh`: the devices, default all)."""
    return {
        "data": pool.dataset.source,
        "input_shape": list(pool.dataset.input_shape),
        "num_classes": pool.dataset.num_classes,
        "pool_size": len(pool.indices),
        "model": model.resolved_settings(),
        **facts,
        "devices": sharding.describe(sharding.data_mesh() if mesh is None else mesh),  # results do not depend on them
        "backend": jax.default_backend(),
        "versions": store.versions(),
    }


class Setup(NamedTuple):
    """A run's inputs once its settings are resolved: all `run` needs before its first round."""

    pool: Pool
    loop_config: loop.LoopConfig
    indices: np.ndarray  # [P'] training-split index of each sample of the (filtered) pool
    data: loop.Data | streamed.HostData
    oracle: loop.Oracle
    state: loop.LoopState  # before the first round
    facts: dict  # config.json's "record"


def setup(config: RunConfig, mesh: Mesh | None = None) -> Setup:
    """Loads the data, checks every setting, draws the initial labels and filters the pool (split over `mesh`)."""
    # Filtering reads the whole pool on each process; what it keeps is split over `mesh` after.
    pool = load_pool(config.data, stream=config.stream, mesh=None if config.filter_fraction > 0 else mesh)
    model = config.model.build(pool.dataset.input_shape, pool.dataset.num_classes)
    loop_config = config.loop._replace(model=model)
    loop.check_config(loop_config)
    stopping.check(config.stop)
    if config.history_dtype not in store.HISTORY_DTYPES:
        raise JalError(f"`history_dtype` {config.history_dtype!r}: choose one of {', '.join(store.HISTORY_DTYPES)}")
    if config.stream:
        streamed.check_config(loop_config)
        if config.filter_fraction > 0:
            raise JalError("`filter_fraction` filters a pool held in memory; run it without `stream`")
    if config.filter_fraction > 0:
        check_estimator(config.filter_estimator, loop_config.mc_samples)
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
    test_size = len(pool.dataset.x_test)
    needs = resources.loop_needs(loop_config, pool_size=len(pool.labels), test_size=test_size, streamed=config.stream)
    resources.check_fits(needs, streamable=not (config.stream or loop_config.acquisition_entry.needs_pool_log_probs))

    indices, labels, data = pool.indices, pool.labels, pool.data
    if config.stream:  # a training buffer for every label the run will have: nothing recompiles
        data = data._replace(max_labels=num_initial + loop_config.acquire * config.iterations)
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
        kept_inputs = data.pool_inputs[kept]
        data = data._replace(pool_inputs=kept_inputs if mesh is None else sharding.spread(kept_inputs, mesh))
        initial = np.searchsorted(kept, initial)  # the same samples, renumbered in the kept pool
    oracle = loop.dataset_oracle(labels)
    state = loop.init(jax.random.key(config.seed), len(labels), initial, oracle(initial), num_classes=model.num_classes)
    facts = record(
        pool,
        model,
        mesh,
        filtered_pool_size=len(indices),
        initial_indices=[int(i) for i in initial],
        score_name=loop_config.score_name,
        consistent_masks=loop_config.consistent_masks,
        chunk_size=loop_config.scoring_chunk_size,
    )
    return Setup(pool, loop_config, indices, data, oracle, state, facts)


def run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    on_start: Callable[[int, int], None] = lambda rounds, finished: None,
    on_round: Callable[[dict], None] = lambda metrics: None,
    mesh: Mesh | None = None,
) -> Path:
    """An active-learning experiment: `config.iterations` rounds of train, score, acquire, then a last evaluation.

    Writes the run directory `out` as it goes (`jal.store`). With `resume`, `out` is an
    interrupted run of `config`: it goes on from its last finished round and ends as an
    uninterrupted run would, bit for bit (`force`: even where its settings or versions
    differ). Once every input is checked, `on_start` gets the number of rounds and of those
    already finished; `on_round` then sees each new round's metrics.

    The rounds run on `mesh`'s devices (default: every device), with the same results on
    any. Where several processes run it together (`jal.distributed`), each computes every
    round and process 0 alone writes `out`; to resume, the others read its finished rounds
    from `out`, which must then lie where every process sees it.
    """
    out = Path(out)
    mesh = sharding.data_mesh() if mesh is None else mesh
    writes = distributed.is_writer()
    status = store.write_status if writes else lambda *args, **facts: None
    writer, diverged = None, False

    def committed() -> bool:  # else a fresh directory goes again: nothing in it is worth keeping
        return writer is not None and (_finished_rounds(out) > 0 or diverged)

    directory = workdir.writing(out, fresh=not resume, leftovers=store.unstarted, committed=committed)
    # Lockstep outermost: where process 0 cannot take the directory, the others stop too.
    with distributed.Lockstep() as lockstep, directory if writes else contextlib.nullcontext():
        saved = _saved_run(out) if resume else None
        if saved is not None and store.committed_rounds(out) == saved.get("iterations", -1) + 1:
            changed = _differences(_settings(saved), json.loads(json.dumps(to_json(config))))
            if [path for path in changed if not path.startswith(IGNORED)]:
                raise JalError(
                    f"{out} is finished, and a finished run's settings cannot change; start a new run from them with "
                    f"jal run --config {out / store.CONFIG} --out NEW_DIR"
                )
            on_start(config.iterations + 1, config.iterations + 1)  # nothing left to do
            return out
        prepared = setup(config, mesh)
        saved_config = {**to_json(config), "record": prepared.facts}
        rounds = config.iterations + 1
        test_size = len(prepared.pool.dataset.x_test) if prepared.loop_config.score_test else 0
        model = prepared.loop_config.model
        model_size = sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0))))
        sizes = dict(rounds=rounds, test_size=test_size, model_size=model_size, history_dtype=config.history_dtype)
        if saved is None:
            writer = (
                store.RunWriter.create(out, saved_config, pool_indices=prepared.indices, **sizes) if writes else None
            )
        else:
            _check_reproducible(out, saved, saved_config, force=force)
            writer = store.RunWriter.reopen(out, pool_size=len(prepared.indices), **sizes) if writes else None
            # With --force the run goes on under the settings given, and says so.
            if writes and json.loads(json.dumps(saved_config)) != saved:
                store.write_json(out / store.CONFIG, {**saved_config, "resumed": _resumes(saved, writer.round)})
        lockstep.agree(json.dumps(saved_config, sort_keys=True).encode(), "its settings, data or versions differ "
                       "from process 0's; start every process with the same flags, data and installation")  # fmt: skip
        # Process 0 has the directory ready: every process goes on from its last finished round.
        done = int(lockstep.reached(writer.round if writes else 0)[0])
        writer = writer if writes else _Follower(done)
        history = store.read_metrics(out)[:done] if done else []
        stopped = stopping.reason(config.stop, history)
        if stopped is not None:  # a rule had stopped it just before an interruption
            writer.close()
            status(out, "finished", rounds=writer.round, stopped=stopped)
            on_start(writer.round, writer.round)
            return out
        state = prepared.state
        for metrics in history[: config.iterations]:
            acquired = np.asarray(metrics["acquired"], np.int64)
            state = loop.label(state, acquired, prepared.oracle(acquired))
        status(out, "running", rounds=writer.round)
        on_start(rounds, writer.round)
        last = time.perf_counter()

        def write(info) -> None:
            nonlocal last
            now = time.perf_counter()
            history.append(writer.append(distributed.local(info), now - last))
            # Every process has the round (where writing it failed, all stop here) and chose alike.
            lockstep.agree(np.asarray(history[-1]["acquired"], np.int64).tobytes(), "it chose other samples")
            on_round(history[-1])
            last = now
            why = stopping.reason(config.stop, history)
            if why is not None and len(history) < rounds:
                raise _Stopped(why)

        try:
            loop.run(
                state,
                prepared.data,
                prepared.loop_config,
                prepared.oracle,
                iterations=config.iterations - min(writer.round, config.iterations),
                callback=write,
                mesh=mesh,
            )
        except _Stopped as e:
            writer.close()
            status(out, "finished", rounds=writer.round, stopped=str(e))
            return out
        except BaseException as e:
            writer.close()  # what a signal cut short between the commit and the count is on disk now
            finished = _finished_rounds(out)
            if isinstance(e, KeyboardInterrupt):
                status(out, "interrupted", rounds=finished)
                kept = f"the {finished} finished rounds are in {out}" if finished else "no round had finished"
                raise JalError(f"interrupted; {kept}; continue with jal run --resume {out}") from None
            if isinstance(e, loop.Diverged):
                diverged = True  # kept, to show what happened
                status(out, "failed", rounds=finished, reason=str(e))
                raise JalError(f"{e}; recorded in {out / store.STATUS}") from None
            error = resources.out_of_memory(e)
            if error is None:
                raise
            status(out, "failed", rounds=finished, reason=str(error))
            raise error from None
        writer.close()
        status(out, "finished", rounds=writer.round)
    return out


class _Stopped(Exception):
    """A stopping rule ended the run (`jal.stopping`): the message says why."""


class _Follower:
    """A process other than process 0's stand-in for its `store.RunWriter`: it counts the rounds and writes nothing."""

    def __init__(self, round_: int):
        self.round = round_

    def append(self, info, seconds: float) -> dict:
        self.round += 1
        return store.metrics_record(info, seconds)

    def close(self) -> None:
        pass


def _finished_rounds(directory: Path, name: str = store.METRICS) -> int:
    """The rounds (or evaluations) committed to disk: the truth, whatever a signal interrupted."""
    return store.committed_rounds(directory, name) if (directory / name).exists() else 0


def _saved_run(run_dir: Path) -> dict:
    """The config.json of a run to resume."""
    if not (run_dir / store.CONFIG).exists():
        raise JalError(f"{run_dir}: the run never started (no {store.CONFIG}); start it anew with --out {run_dir}")
    saved = store.read_config(run_dir)
    if store.is_filter_dir(run_dir):
        raise JalError(f"{run_dir} is a jal filter directory; resume it with jal filter --resume")
    return saved


def _differences(saved, given, path: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [d for key in sorted(set(saved) | set(given)) for d in _differences(
            saved.get(key), given.get(key), f"{path}.{key}" if path else key)]  # fmt: skip
    return [] if saved == given else [path]


IGNORED = ("data.path", "data.mnist_dir", "data.tfds_data_dir", "record.data.path", "record.data.origin",
           "record.versions", "record.backend", "record.devices", "resumed")  # fmt: skip


def _check_reproducible(directory: Path, saved: dict, given: dict, *, force: bool) -> None:
    """Raises JalError unless `given` (a config.json) reproduces the `saved` one: the same settings and data.

    Where the data lie is not compared, only what they hold (their md5); the versions of
    jal and its packages and the backend are, for they change the numbers.
    """
    if force:
        return
    given = json.loads(json.dumps(given))  # as it would read back: tuples as lists
    changed = [_named(path) for path in _differences(saved, given) if not path.startswith(IGNORED)]
    record, now = saved["record"], given["record"]
    changed += [f"the {name} version" for name in sorted(set(record.get("versions", {})) | set(now["versions"]))
                if record.get("versions", {}).get(name) != now["versions"].get(name)]  # fmt: skip
    if record.get("backend") != now["backend"]:
        changed.append("the backend")
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise JalError(
            f"{directory}: going on would change {shown}, so it would not end as an uninterrupted run would; "
            "resume with its own settings and versions, or add --force to accept the change"
        )


def _named(path: str) -> str:
    """A setting's name as messages give it (the CLI shows its flag), or what a record entry says."""
    if path.startswith("record."):
        return f"what the settings resolved to ({path})"
    return f"`{path.rsplit('.', 1)[-1]}`"


def _settings(saved: dict) -> dict:
    """A config.json's settings: without what they resolved to and the history of resumes."""
    return {key: value for key, value in saved.items() if key not in ("record", "resumed")}


def _resumes(saved: dict, round_: int) -> list[dict]:
    """config.json's "resumed": the rounds at which a run went on under other settings (--force)."""
    return [*saved.get("resumed", []), {"round": round_, "before": {k: v for k, v in saved.items() if k != "resumed"}}]


def filter_pool(
    config: FilterConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    on_result: Callable[[dict], None] = lambda evaluation: None,
) -> Path:
    """Offline data filtering: test accuracy after removing the lowest-scoring fractions of the pool, and random ones.

    A model trained on `config.initial` pool samples (or `config.held_out` training inputs
    outside the pool) scores the pool once; for each fraction, a fresh model trains on what
    is kept. Writes a filter directory (`jal.store`), one evaluation at a time; `on_result`
    sees each new one. With `resume`, `out` is an interrupted filter of `config`, and it
    goes on from its last evaluation (`force`: even where its settings or versions differ).
    """
    out = Path(out)
    done = 0  # evaluations on disk
    with workdir.writing(
        out, fresh=not resume, leftovers=store.unstarted, committed=lambda: _finished_rounds(out, store.FILTERING) > 0
    ):
        saved = _saved_filter(out) if resume else None
        pool = load_pool(config.data)
        dataset = pool.dataset
        model = config.model.build(dataset.input_shape, dataset.num_classes)
        check_estimator(config.estimator, config.mc_samples)
        fit_key, score_key, curve_key = jax.random.split(jax.random.key(config.seed), 3)
        if config.held_out:
            outside = np.setdiff1d(np.arange(len(dataset.x_train)), pool.indices)
            if config.held_out > len(outside):
                raise JalError(
                    f"`held_out` {config.held_out}: only {len(outside)} training inputs lie outside the pool"
                )
            scoring_set = np.sort(np.random.RandomState(config.seed).choice(outside, config.held_out, replace=False))
            protected = np.zeros(0, int)
        else:
            if config.initial > len(pool.indices):
                raise JalError(f"`initial` {config.initial} must be at most the pool size {len(pool.indices)}")
            protected = loop.initial_indices(len(pool.indices), config.initial, config.seed)
            scoring_set = pool.indices[protected]
        guarded = loop.LoopConfig(model=model, mc_samples=config.mc_samples, train=config.train)
        resources.check_fits(resources.loop_needs(guarded, pool_size=len(pool.indices), test_size=len(dataset.x_test)))
        facts = record(pool, model, scoring_set=[int(i) for i in scoring_set])
        saved_config = {**to_json(config), "record": facts}
        if saved is None:
            if config.held_out:
                inputs = jnp.asarray(dataset.normalization.apply(dataset.x_train[scoring_set]))
                labels, kept = dataset.y_train[scoring_set], np.arange(len(scoring_set))
            else:
                inputs, labels, kept = pool.data.pool_inputs, pool.labels, protected
            params = fit(fit_key, model, inputs, labels, kept, config.train)
            scores = score_all(
                score_key, model, params, pool.data.pool_inputs, config.estimator, mc_samples=config.mc_samples
            )
            np.save(out / store.POOL_INDICES, pool.indices)
            np.save(out / store.FILTER_SCORES, scores)
            (out / store.FILTERING).touch()
            store.write_status(out, "running")
            store.write_json(out / store.CONFIG, saved_config)  # the filter exists from here on
        else:
            _check_reproducible(out, saved, saved_config, force=force)
            scores = store.read_filter_scores(out, len(pool.indices))
            done = store.committed_rounds(out, store.FILTERING)

        def write(evaluation) -> None:
            nonlocal done
            store.append_filtering(out, evaluation._asdict())
            done += 1
            on_result(evaluation._asdict())

        try:
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
                skip=done,
                on_result=write,
            )
        except KeyboardInterrupt:
            done = _finished_rounds(out, store.FILTERING)
            store.write_status(out, "interrupted", evaluations=done)
            kept = f"its {done} evaluations are in {out}" if done else "no evaluation had finished"
            raise JalError(f"interrupted; {kept}; continue with jal filter --resume {out}") from None
        store.write_status(out, "finished", evaluations=done)
    return out


def _saved_filter(directory: Path) -> dict:
    """The config.json of a filter to resume."""
    if not (directory / store.CONFIG).exists():
        raise JalError(f"{directory}: the filter never started (no {store.CONFIG}); start it anew with --out")
    saved = store.read_config(directory)
    if not store.is_filter_dir(directory):
        raise JalError(f"{directory} is not a jal filter directory; resume a run with jal run --resume")
    return saved


def analyze_run(run_dir: str | os.PathLike, *, sources: dict | None = None, retrain: bool = True, **options) -> dict:
    """`jal.analysis.analyze` of a run directory, with the run's data and model.

    Args:
      run_dir: a `jal run` directory.
      sources: `jal.data.DataConfig` source fields (path, mnist_dir, tfds, tfds_data_dir)
        that replace the run's, where its data now lies elsewhere.
      retrain: train a sibling of every re-scored round's model (`analyze`'s pool_labels).
      options: `analyze`'s keyword arguments.
    """
    # The run's lock: no run or other analysis writes it meanwhile. analysis.json is written
    # whole at the end, so an interrupted analysis leaves the run as it was, to start again.
    with workdir.writing(run_dir, fresh=False, leftovers=store.unstarted, committed=lambda: True):
        return _analyze_run(Path(run_dir), sources, retrain, options)


def _analyze_run(run_dir: Path, sources: dict | None, retrain: bool, options: dict) -> dict:
    saved = store.read_config(run_dir)
    settings = _settings(saved)
    config = from_json(RunConfig, settings, f"{run_dir}/{store.CONFIG}")
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
