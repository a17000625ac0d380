"""The active-learning loop over a pool that stays on the host: memory bounded whatever the pool's size.

`jal.loop.propose(state, HostData(...), config)` runs the round `loop.propose` runs on a
`loop.Data`, with the same LoopState and StepInfo, the same model and (but for scores
tied to a few ulps, below) the same choice, for a pool held on the host: a memory map of
raw values with their `Normalization` (`jal.data.host.PoolRows`), or normalised floats.
Nothing the size of the pool's inputs, nor of its P x K x C log-probabilities, is ever in
memory; P scores and P labels are.

* Training reads the labeled inputs alone, gathered on the host into a buffer of a fixed
  size (`HostData.max_labels`), so nothing recompiles as labels are added. On it
  `jal.train.train` draws the same random numbers and reads the same values as on the
  whole pool, so it trains the same parameters, bit for bit.
* The pool is scored batch by batch (`jal.scoring.score_pool`): input i gets the dropout
  draws of position i, as when the whole pool is scored at once. The scores agree with
  the in-memory round's to a few float32 ulps, not bit for bit: XLA rounds a score's
  reductions, and the normalisation, differently for a batch than for the whole pool.
* The choice is made from the P scores. Acquisitions that choose from the pool's
  log-probabilities (BatchBALD, EPIG) are refused: they need the pool in memory.

`loop.propose`, `evaluate`, `step` and `run` send a `HostData` here, so both loops share
one driver.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jal import loop
from jal.checks import check_finite, checked_inputs
from jal.data.normalization import Normalization
from jal.errors import JalError
from jal.scoring import score_pool
from jal.train import epoch_size, train


class HostData(NamedTuple):
    """A pool held on the host, read a batch at a time, and the test set on the device."""

    pool_inputs: Any  # [P, *input_shape] array-like read in slices: raw values with `normalization`, else normalised
    test_inputs: jax.Array  # [T, *input_shape] float32, normalised
    test_labels: jax.Array  # [T] int32
    normalization: Normalization | None = None  # of the pool's raw values, applied batch by batch
    # The most labels a model trains on: the training buffer's fixed size. None: the labels
    # so far, rounded up to a power of two (training then recompiles each time they double).
    max_labels: int | None = None
    batch_size: int = 8192  # pool inputs per host-to-device transfer


def check_config(config: loop.LoopConfig) -> None:
    """Refuses an acquisition that chooses from the pool's log-probabilities, which a streamed pool does not keep."""
    entry = config.acquisition_entry
    if entry.needs_pool_log_probs:
        raise JalError(
            f"{entry.name} chooses from the pool's MC log-probabilities, which a streamed pool does not keep; "
            "keep the pool in memory (without `stream`) or acquire by a score such as bald"
        )


def buffer_size(num_labeled: int, max_labels: int | None) -> int:
    """Rows of the training buffer: `max_labels`, else `num_labeled` rounded up to a power of two."""
    if max_labels is None:
        return 1 << max(num_labeled - 1, 0).bit_length()
    if num_labeled > max_labels:
        raise JalError(f"{num_labeled} labels exceed `max_labels` {max_labels}, the training buffer's size; raise it")
    return max_labels


def labeled_buffer(state: loop.LoopState, data: HostData, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The labeled inputs, normalised, and their labels, in the order labeled: `size` rows, zero-padded.

    Gathered on the host, so only these rows are read from the pool.
    """
    order = np.asarray(state.order)[: int(state.num_labeled)]
    rows = np.asarray(data.pool_inputs[order])
    if data.normalization is not None:
        rows = data.normalization.apply(rows)  # on the host, as `jal.experiment.load_pool` normalises a whole pool
    check_finite(rows)
    inputs = np.zeros((size, *rows.shape[1:]), np.float32)
    inputs[: len(rows)] = rows
    labels = np.zeros(size, np.int32)
    labels[: len(order)] = np.asarray(state.labels)[order]
    return inputs, labels


@functools.cache
def _without_targets(score):
    """An acquisition's score of log-probabilities alone: one function per score, so `score_pool` compiles it once."""
    return lambda log_probs: score(log_probs, None)


_finish_round = jax.jit(loop.finish_round, static_argnames=("config", "mesh"))


def propose(
    state: loop.LoopState, data: HostData, config: loop.LoopConfig, *, mesh=None
) -> tuple[jax.Array, loop.StepInfo]:
    """`jal.loop.propose`'s round for a pool on the host; `loop.propose` checks the state and config, then calls it."""
    check_config(config)
    model = config.model
    fix = ", or raw ones with `normalization`"
    checked_inputs(data.pool_inputs, model.input_shape, "pool_inputs", raw=data.normalization is not None, fix=fix)
    num_labeled = int(state.num_labeled)
    size = buffer_size(num_labeled, data.max_labels)
    train_key, pool_key, test_key, acquire_key = loop.round_keys(state, config)
    inputs, labels = labeled_buffer(state, data, size)
    # The buffer holds the labeled inputs in the order labeled, so its order is 0..size-1.
    params, train_loss = train(
        train_key,
        model,
        jnp.asarray(inputs),
        jnp.asarray(labels),
        jnp.arange(size, dtype=jnp.int32),
        state.num_labeled,
        config=config.train,
        samples_per_epoch=epoch_size(num_labeled, config.train),
        mesh=mesh,
    )
    scores = score_pool(
        model,
        params,
        data.pool_inputs,
        key=pool_key,
        estimator=_without_targets(config.acquisition_entry.score),
        mc_samples=config.mc_samples,
        chunk_size=config.scoring_chunk_size,
        batch_size=data.batch_size,
        normalization=data.normalization,
        consistent=config.consistent_masks,
        mesh=mesh,
    )
    test = (data.test_inputs, data.test_labels)
    trained = (params, train_loss)
    return _finish_round(state, test, trained, jnp.asarray(scores), (test_key, acquire_key), config=config, mesh=mesh)
