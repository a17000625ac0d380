"""The functional active-learning loop: train, score, acquire, label, repeat.

State is immutable and threaded through explicitly, in the style of blackjax kernels:

    state = init(key, pool_size, initial_indices, initial_labels)
    indices, info = propose(state, data, config)       # train, score, choose
    state = label(state, indices, oracle(indices))     # the oracle may be a person

`propose` never changes the state and is deterministic given it; `step` does both halves
with an oracle. Every array has a shape fixed by the pool size, so after the first
iteration nothing recompiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jal.acquire import SAMPLINGS, Acquisition, resolve, select
from jal.acquire.epig import sample_targets
from jal.acquire.estimators import accuracy_and_nll
from jal.chunks import resolve_chunk_size
from jal.errors import JalError
from jal.models import Model
from jal.models.lenet5 import LeNet5
from jal.scoring import log_probs, mc_log_probs
from jal.sharding import replicated
from jal.train import TrainConfig, epoch_size, train
from jal.train import check_config as check_train_config

if TYPE_CHECKING:
    from jal.streamed import HostData

UNLABELED = -1


class LoopConfig(NamedTuple):
    model: Model = LeNet5()  # the reference's LeNet-5 (`jal.models`)
    acquisition: str | Acquisition = "bald"  # a name of `jal.acquire.ACQUISITIONS`, or one's own
    acquire: int = 1  # samples labeled per iteration
    mc_samples: int = 32  # K
    chunk_size: int | str = "auto"  # inputs per scoring chunk; "auto": 32 on CPU, 1,024 on GPU and TPU (`jal.chunks`)
    score_test: bool = True  # MC-score the test set; else evaluate it with one deterministic pass
    sampling: str = "topk"  # or a stochastic draw from the scores: `jal.acquire.SAMPLINGS`
    temperature: float = 1.0  # of the stochastic draw
    consistent: bool = False  # the same K masks for every input (always on where the acquisition needs it)
    joint_samples: int = 10_000  # BatchBALD's configuration budget M (`jal.acquire.batchbald`)
    epig_targets: int = 100  # EPIG's target inputs, drawn from the pool each iteration
    train: TrainConfig = TrainConfig()

    @property
    def acquisition_entry(self) -> Acquisition:
        return resolve(self.acquisition)

    @property
    def score_name(self) -> str:
        """The score recorded for every sample (BALD for random and BatchBALD: BatchBALD's first step)."""
        return self.acquisition_entry.recorded_score

    @property
    def consistent_masks(self) -> bool:
        """Joint quantities over several inputs need the same K networks for all of them."""
        return self.consistent or self.acquisition_entry.consistent

    @property
    def scoring_chunk_size(self) -> int:
        """`chunk_size` as it applies on this backend: "auto" resolved (`jal.chunks.default_chunk_size`)."""
        return resolve_chunk_size(self.chunk_size)


class Data(NamedTuple):
    pool_inputs: jax.Array  # [P, *input_shape] float32, normalised
    test_inputs: jax.Array  # [T, *input_shape] float32, normalised
    test_labels: jax.Array  # [T] int32


class LoopState(NamedTuple):
    labels: jax.Array  # [P] int32, UNLABELED where no label is known
    order: jax.Array  # [P] int32 pool indices in the order they were labeled, UNLABELED past num_labeled
    num_labeled: jax.Array  # [] int32
    iteration: jax.Array  # [] int32, the number of acquisitions so far
    key: jax.Array  # PRNG key; iteration i uses fold_in(key, i)

    @property
    def labeled(self) -> jax.Array:
        """[P] bool mask of the labeled pool samples."""
        return self.labels != UNLABELED


class StepInfo(NamedTuple):
    """What one iteration reports; nothing here is needed by the next one."""

    iteration: jax.Array  # []
    num_labeled: jax.Array  # [] labels the model was trained on
    test_accuracy: jax.Array  # [] fraction in [0, 1]
    test_nll: jax.Array  # []
    train_loss: jax.Array  # [epochs] mean training loss per epoch
    pool_scores: jax.Array  # [P] score of every pool sample
    test_scores: jax.Array  # [T], or [0] when the test set is not MC-scored
    acquired: jax.Array  # [k] pool indices chosen, best first
    acquired_scores: jax.Array  # [k] their scores
    params: dict  # the model this round trained, for re-scoring later (`jal.store.read_model`)


def check_settings(pool_size: int, initial: int, acquire: int, iterations: int) -> None:
    """Raises JalError for pool and schedule sizes the loop cannot honour."""
    if pool_size < 1:
        raise JalError("the pool is empty; use a `pool_size` of at least 1")
    if not 1 <= initial <= pool_size:
        raise JalError(f"`initial` {initial} must be between 1 and the pool size {pool_size}")
    if acquire < 0 or iterations < 0:
        raise JalError("`acquire` and `iterations` must be non-negative")
    if initial + acquire * iterations > pool_size:
        raise JalError(
            f"{initial} initial + {iterations} x {acquire} acquired labels exceed the pool of {pool_size}; "
            "lower `iterations` or `acquire`, or raise `pool_size`"
        )


def check_config(config: LoopConfig) -> None:
    """Raises JalError for LoopConfig settings that contradict each other."""
    entry = config.acquisition_entry
    if config.sampling not in SAMPLINGS:
        raise JalError(f"unknown sampling {config.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if config.sampling != "topk" and entry.select is not None:
        raise JalError(f"`sampling` {config.sampling} does not apply to {entry.name}; use `sampling` topk")
    if not config.temperature >= 0:
        raise JalError(f"`temperature` {config.temperature} must be >= 0")
    from jal.checks import check_sizes

    sizes = ("acquire", "mc_samples", "joint_samples", "epig_targets")
    check_sizes(**{name: getattr(config, name) for name in sizes}, chunk_size=config.scoring_chunk_size)
    entry.check_mc_samples(config.mc_samples)
    check_train_config(config.train)


def _checked(indices, labels, labeled: np.ndarray, num_classes: int | None) -> tuple[jax.Array, jax.Array]:
    """Indices and labels as int32 device arrays, after checking they can be given."""
    indices, labels = np.asarray(indices), np.asarray(labels)
    if indices.shape != labels.shape or indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise JalError(f"indices {indices.shape} and labels {labels.shape} must be 1-D integer arrays of one length")
    if ((indices < 0) | (indices >= len(labeled))).any():
        raise JalError(f"pool indices must lie in 0..{len(labeled) - 1}")
    if len(np.unique(indices)) != len(indices) or labeled[indices].any():
        raise JalError("some of these samples are already labeled or repeated; label each pool sample once")
    if labels.dtype.kind not in "iu" or (labels < 0).any():
        raise JalError("labels must be integer classes 0..C-1")
    if num_classes is not None and (labels >= num_classes).any():
        raise JalError(f"label {int(labels.max())}: labels must be classes 0..{num_classes - 1}")
    return jnp.asarray(indices, jnp.int32), jnp.asarray(labels, jnp.int32)


def init(
    key: jax.Array, pool_size: int, initial_indices, initial_labels, *, num_classes: int | None = None
) -> LoopState:
    """The state before the first iteration: the initial samples labeled, in order (labels checked against C)."""
    indices, labels = _checked(initial_indices, initial_labels, np.zeros(pool_size, bool), num_classes)
    empty = jnp.full((pool_size,), UNLABELED, jnp.int32)
    return LoopState(
        empty.at[indices].set(labels), empty.at[: len(indices)].set(indices), jnp.int32(len(indices)), jnp.int32(0), key
    )


def initial_indices(pool_size: int, initial: int, seed: int) -> np.ndarray:
    """The reference's initial labeled set: np.random.seed(seed); shuffle(arange(P))[:initial]."""
    return np.random.RandomState(seed).permutation(pool_size)[:initial]


def balanced_initial_indices(pool_labels, per_class: int, seed: int, *, num_classes: int = 10) -> np.ndarray:
    """`per_class` pool samples of every class, chosen at random (the BatchBALD paper's start)."""
    pool_labels = np.asarray(pool_labels)
    shuffled = np.random.RandomState(seed).permutation(len(pool_labels))
    chosen = [shuffled[pool_labels[shuffled] == c][:per_class] for c in range(num_classes)]
    if min(len(c) for c in chosen) < per_class:
        raise JalError(f"the pool has fewer than {per_class} samples of some class; lower `initial_per_class`")
    return np.sort(np.concatenate(chosen))


def round_keys(state: LoopState, config: LoopConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The round's PRNG keys: training, the pool's dropout, the test set's dropout, the acquisition."""
    key = jax.random.fold_in(state.key, state.iteration)
    train_key, pool_key, test_key, acquire_key = jax.random.split(key, 4)
    if config.consistent_masks:
        test_key = pool_key  # the same K networks for the pool and the test set
    return train_key, pool_key, test_key, acquire_key


def _mc(config: LoopConfig, mesh) -> Callable:
    """`mc(params, inputs, key=...)`: MC log-probabilities [N, K, C] under the round's settings."""
    return functools.partial(
        mc_log_probs,
        config.model,
        mc_samples=config.mc_samples,
        chunk_size=config.scoring_chunk_size,
        consistent=config.consistent_masks,
        mesh=mesh,
    )


@functools.partial(jax.jit, static_argnames=("config", "samples_per_epoch", "mesh"))
def _propose(state: LoopState, data: Data, *, config: LoopConfig, samples_per_epoch: int, mesh=None):
    entry = config.acquisition_entry
    train_key, pool_key, test_key, acquire_key = round_keys(state, config)
    params, train_loss = train(
        train_key,
        config.model,
        data.pool_inputs,
        state.labels,
        state.order,
        state.num_labeled,
        config=config.train,
        samples_per_epoch=samples_per_epoch,
        mesh=mesh,
    )
    # The MC forward passes are split over the mesh; the rest reduces over inputs and
    # runs whole on every device, as on one (`jal.sharding`).
    pool_log_probs = replicated(_mc(config, mesh)(params, data.pool_inputs, key=pool_key), mesh)
    targets = None
    if entry.uses_targets:
        acquire_key, target_key = jax.random.split(acquire_key)
        targets = pool_log_probs[sample_targets(target_key, pool_log_probs.shape[0], config.epig_targets)]
    pool_scores = replicated(entry.score(pool_log_probs, targets), mesh)
    return finish_round(
        state,
        (data.test_inputs, data.test_labels),
        (params, train_loss),
        pool_scores,
        (test_key, acquire_key),
        config=config,
        mesh=mesh,
        pool_log_probs=pool_log_probs,
        targets=targets,
    )


def finish_round(
    state: LoopState,
    test: tuple[jax.Array, jax.Array],
    trained: tuple,
    pool_scores: jax.Array,
    keys: tuple,
    *,
    config: LoopConfig,
    mesh=None,
    pool_log_probs=None,
    targets=None,
) -> tuple[jax.Array, StepInfo]:
    """A round once its model is trained and its pool scored: the test set's metrics, the choice, the StepInfo.

    Traceable. `test` is (test_inputs, test_labels), `trained` (params, train_loss) and
    `keys` (test_key, acquire_key) of `round_keys`. `pool_log_probs` is None where the pool was
    scored batch by batch and none were kept (`jal.streamed`).
    """
    entry = config.acquisition_entry
    (test_inputs, test_labels), (params, train_loss), (test_key, acquire_key) = test, trained, keys
    if config.score_test:
        test_log_probs = replicated(_mc(config, mesh)(params, test_inputs, key=test_key), mesh)
        test_scores = replicated(entry.score(test_log_probs, targets), mesh)
    else:
        test_log_probs = log_probs(config.model, params, test_inputs)
        test_scores = jnp.zeros((0,), jnp.float32)
    accuracy, nll = accuracy_and_nll(test_log_probs, test_labels)
    acquired = select(entry, acquire_key, pool_log_probs, pool_scores, state.labeled, config.acquire, config)
    info = StepInfo(
        state.iteration,
        state.num_labeled,
        accuracy,
        nll,
        train_loss,
        pool_scores,
        test_scores,
        acquired,
        pool_scores[acquired],
        params,
    )
    return acquired, info


def propose(state: LoopState, data: Data | HostData, config: LoopConfig, *, mesh=None) -> tuple[jax.Array, StepInfo]:
    """Trains a fresh model on the labeled set, scores pool and test set, chooses samples.

    `data` holds the pool on the device (`Data`), or on the host, where it is read batch
    by batch (`jal.streamed.HostData`): the same proposal either way.

    With `mesh` (`jal.sharding.data_mesh`), scoring and training's gradient groups are
    split over its devices; the result is the same, bit for bit, on any mesh.

    Returns:
      (indices [config.acquire] into the pool, best first; StepInfo).
    """
    check_config(config)
    num_labeled = int(state.num_labeled)
    if num_labeled + config.acquire > state.labels.shape[0]:
        raise JalError(
            f"cannot choose {config.acquire} more samples: only {state.labels.shape[0] - num_labeled} are unlabeled"
        )
    return _proposer(data)(state, data, config, mesh=mesh)


def evaluate(state: LoopState, data: Data | HostData, config: LoopConfig, *, mesh=None) -> StepInfo:
    """A last round that trains and scores but acquires nothing.

    It runs the same compiled function as `propose` (so nothing recompiles) and drops
    the choice.
    """
    _, info = _proposer(data)(state, data, config, mesh=mesh)
    return info._replace(acquired=info.acquired[:0], acquired_scores=info.acquired_scores[:0])


def _on_device(state: LoopState, data: Data, config: LoopConfig, *, mesh=None) -> tuple[jax.Array, StepInfo]:
    samples = epoch_size(int(state.num_labeled), config.train)
    return _propose(state, data, config=config, samples_per_epoch=samples, mesh=mesh)


def _proposer(data: Data | HostData) -> Callable:
    """A round's work where the pool lies: one jitted function on the device, or batch by batch from the host."""
    from jal import streamed  # it builds on this module

    return streamed.propose if isinstance(data, streamed.HostData) else _on_device


@jax.jit
def _label(state: LoopState, indices: jax.Array, labels: jax.Array) -> LoopState:
    positions = state.num_labeled + jnp.arange(indices.shape[0])
    return state._replace(
        labels=state.labels.at[indices].set(labels),
        order=state.order.at[positions].set(indices),
        num_labeled=state.num_labeled + indices.shape[0],
        iteration=state.iteration + 1,
    )


def label(state: LoopState, indices, labels, *, num_classes: int | None = None) -> LoopState:
    """A new state with `labels` given to the pool samples `indices` (not yet labeled; labels checked against C)."""
    return _label(state, *_checked(indices, labels, np.asarray(state.labeled), num_classes))


Oracle = Callable[[np.ndarray], np.ndarray]


def dataset_oracle(pool_labels) -> Oracle:
    """The simulation's oracle: looks the chosen samples' labels up in the dataset."""
    pool_labels = np.asarray(pool_labels)
    return lambda indices: pool_labels[np.asarray(indices)]


class Diverged(JalError):
    """Training's loss became non-finite or exploded: the round's model and scores would be meaningless."""


EXPLODED = 100.0  # x log C: far above any loss a sane training passes through (log C: a uniform guess)


def check_trained(info: StepInfo, num_classes: int | None = None) -> StepInfo:
    """Raises Diverged if training's loss is not finite, or exceeds EXPLODED x log C given `num_classes`."""
    loss = np.asarray(info.train_loss)
    round_ = int(info.iteration)
    if not np.isfinite(loss).all():
        raise Diverged(f"training diverged in round {round_} (non-finite loss); lower `learning_rate`")
    if num_classes is not None and loss.size and loss.max() > EXPLODED * np.log(max(num_classes, 2)):
        raise Diverged(
            f"training diverged in round {round_} (loss {loss.max():.3g}, above {EXPLODED:g} x log C); "
            "lower `learning_rate`"
        )
    return info


def step(state: LoopState, data: Data, config: LoopConfig, oracle: Oracle, *, mesh=None) -> tuple[LoopState, StepInfo]:
    """propose, then label what was proposed with `oracle`."""
    indices, info = propose(state, data, config, mesh=mesh)
    check_trained(info, config.model.num_classes)
    indices = np.asarray(indices)
    return label(state, indices, oracle(indices), num_classes=config.model.num_classes), info


def run(
    state: LoopState,
    data: Data,
    config: LoopConfig,
    oracle: Oracle,
    *,
    iterations: int,
    callback: Callable[[StepInfo], None] = lambda info: None,
    mesh=None,
) -> LoopState:
    """`iterations` acquisition steps, then one last evaluation; `callback` sees every StepInfo."""
    for _ in range(iterations):
        state, info = step(state, data, config, oracle, mesh=mesh)
        callback(info)
    callback(check_trained(evaluate(state, data, config, mesh=mesh), config.model.num_classes))
    return state
