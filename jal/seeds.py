"""Several seeds of one experiment in one compiled program: the loop's round vmapped over a seed axis.

    jal run --seeds 0,1,2,3,4 --out runs/bald     # runs/bald/seed-0 ... seed-4

Each seed is the run `jal run --seed S` makes alone: its own initial labels, training,
dropout draws and choices. On an accelerator a small model leaves most of the device
idle; batching the seeds fills it. Every seed's directory is an ordinary run directory,
written round by round and resumable alone (`jal run --resume runs/bald/seed-3`).
Batching changes how some sums are rounded, so metrics agree with a lone run to float
rounding (a test states the tolerance), and acquisitions are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jal import loop, sharding, stopping, store, workdir
from jal.config import RunConfig, to_json
from jal.errors import JalError
from jal.train import epoch_size


def check_seeds(seeds: Sequence[int]) -> None:
    """Raises JalError for a seed list that cannot make one directory per seed."""
    if not seeds:
        raise JalError("`seeds` is empty; give at least one seed, e.g. --seeds 0,1,2")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise JalError(f"`seeds` repeats {', '.join(map(str, repeated))}; give each seed once")


def seed_dir(out: str | Path, seed: int) -> Path:
    """The run directory of one seed of a `--seeds` run."""
    return Path(out) / f"seed-{seed}"


@functools.partial(jax.jit, static_argnames=("config", "samples_per_epoch", "mesh"))
def _propose_all(states: loop.LoopState, data: loop.Data, *, config, samples_per_epoch: int, mesh=None):
    def one(state):
        return loop._propose(state, data, config=config, samples_per_epoch=samples_per_epoch, mesh=mesh)

    return jax.vmap(one)(states)


_label_all = jax.jit(jax.vmap(loop._label))


def _seed(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def run_loop(
    states: Sequence[loop.LoopState],
    data: loop.Data,
    config: loop.LoopConfig,
    oracles: Sequence[loop.Oracle],
    *,
    iterations: int,
    callback: Callable[[int, loop.StepInfo], None] = lambda seed, info: None,
    mesh=None,
) -> list[loop.LoopState]:
    """`loop.run` for several states at once: every round of every seed in one vmapped program.

    The states must hold the same number of labels (the same initial size); `callback`
    gets (the seed's position, its StepInfo) for every round.
    """
    loop.check_config(config)
    if len({int(s.num_labeled) for s in states}) != 1:
        raise JalError("the seeds' initial labeled sets differ in size; give every seed the same `initial`")
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    for round_ in range(iterations + 1):
        samples = epoch_size(int(batched.num_labeled[0]), config.train)
        acquired, infos = _propose_all(batched, data, config=config, samples_per_epoch=samples, mesh=mesh)
        acquired = np.asarray(acquired)
        last = round_ == iterations
        for i in range(len(states)):
            info = loop.check_trained(_seed(infos, i), config.model.num_classes)
            if last:
                info = info._replace(acquired=info.acquired[:0], acquired_scores=info.acquired_scores[:0])
            callback(i, info)
        if not last:
            labels = np.stack([np.asarray(oracle(acquired[i])) for i, oracle in enumerate(oracles)])
            batched = _label_all(batched, jnp.asarray(acquired, jnp.int32), jnp.asarray(labels, jnp.int32))
    return [_seed(batched, i) for i in range(len(states))]


def run(
    config: RunConfig,
    seeds: Sequence[int],
    out: str | Path,
    *,
    on_start: Callable[[int, int], None] = lambda rounds, finished: None,
    on_round: Callable[[dict], None] = lambda metrics: None,
) -> list[Path]:
    """`experiment.run` for every seed of `seeds` in one program; writes `out/seed-S` for each."""
    from jal import experiment  # the recipe this batches

    check_seeds(seeds)
    if config.stream or config.filter_fraction > 0:
        raise JalError("`seeds` batches runs whose pool is in memory and unfiltered; run each seed alone with `seed`")
    configs = [dataclasses.replace(config, seed=int(s)) for s in seeds]
    dirs = [seed_dir(out, s) for s in seeds]
    writers: list = [None] * len(seeds)
    with contextlib.ExitStack() as stack:
        for i, directory in enumerate(dirs):
            stack.enter_context(workdir.writing(
                directory, fresh=True, leftovers=store.unstarted,
                committed=lambda i=i: writers[i] is not None and writers[i].round > 0))  # fmt: skip
        prepared = [experiment.setup(c) for c in configs]
        first = prepared[0]
        rounds = config.iterations + 1
        test_size = len(first.pool.dataset.x_test) if first.loop_config.score_test else 0
        model_size = sum(
            x.size for x in jax.tree.leaves(jax.eval_shape(first.loop_config.model.init, jax.random.key(0)))
        )
        for i, (c, p) in enumerate(zip(configs, prepared, strict=True)):
            writers[i] = store.RunWriter.create(
                dirs[i], {**to_json(c), "record": p.facts}, pool_indices=p.indices, rounds=rounds,
                test_size=test_size, model_size=model_size, history_dtype=c.history_dtype)  # fmt: skip
            store.write_status(dirs[i], "running", rounds=0)
        on_start(rounds * len(seeds), 0)
        histories: list[list] = [[] for _ in seeds]
        stopped: list[str | None] = [None] * len(seeds)
        last = [time.perf_counter()] * len(seeds)

        def write(i: int, info) -> None:
            if stopped[i] is not None:
                return  # a stopping rule ended this seed: it computes on with the others, unwritten
            now = time.perf_counter()
            histories[i].append(writers[i].append(info, now - last[i]))
            last[i] = now
            on_round(histories[i][-1])
            why = stopping.reason(configs[i].stop, histories[i])
            if why is not None and len(histories[i]) < rounds:
                stopped[i] = why

        mesh = sharding.data_mesh()
        data = first.data._replace(pool_inputs=sharding.spread(first.data.pool_inputs, mesh))
        try:
            run_loop([p.state for p in prepared], data, first.loop_config, [p.oracle for p in prepared],
                     iterations=config.iterations, callback=write, mesh=mesh)  # fmt: skip
        except BaseException as e:
            for i, directory in enumerate(dirs):
                writers[i].close()
                state = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                store.write_status(
                    directory, state, rounds=writers[i].round, **({} if state == "interrupted" else {"reason": str(e)})
                )
            if isinstance(e, KeyboardInterrupt):
                raise JalError(
                    f"interrupted; continue each seed alone with jal run --resume {dirs[0].parent}/seed-S"
                ) from None
            raise
        for i, directory in enumerate(dirs):
            writers[i].close()
            facts = {"stopped": stopped[i]} if stopped[i] else {}
            store.write_status(directory, "finished", rounds=writers[i].round, **facts)
    return dirs
