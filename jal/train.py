"""Training a fresh model on the labeled set, as the reference does at every iteration.

Adam (lr 5e-4) with PyTorch's `weight_decay` semantics (L2 added to the gradient before
Adam, not AdamW), batch 64, a few epochs over a bootstrap sample of max(10,000, |labeled|)
draws from the labeled set, reshuffled each epoch. The whole run is one jitted function:
epochs and steps under `lax.scan`, array shapes independent of how many samples are
labeled, so nothing recompiles as the labeled set grows.

With `groups` > 1 each batch is cut into that many fixed groups, each group's gradient
is computed alone (on its own device where a mesh spreads them) and the groups are
summed in one fixed order: the trained parameters are the same, bit for bit, on any
number of devices.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jal.checks import check_sizes
from jal.errors import JalError
from jal.models import Model
from jal.sharding import DATA, is_split, replicated


class TrainConfig(NamedTuple):
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    min_samples_per_epoch: int = 10_000
    groups: int = 1  # gradient groups per batch, spread over the devices; 1: the batch whole on one device


def check_config(config: TrainConfig) -> None:
    """Raises JalError for training settings that cannot be honoured."""
    check_sizes(batch_size=config.batch_size, groups=config.groups)
    if config.batch_size % config.groups:
        raise JalError(
            f"`batch_size` {config.batch_size} must be a multiple of `groups` {config.groups}; change one of them"
        )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    # add_decayed_weights before adam = torch.optim.Adam(weight_decay=...): L2 in the gradient.
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))


def epoch_size(num_labeled: int, config: TrainConfig) -> int:
    """Samples per epoch: max(min_samples_per_epoch, num_labeled).

    It is a static shape: constant (no recompilation) while num_labeled stays at or below
    min_samples_per_epoch, which covers every pool of up to that size.
    """
    return max(config.min_samples_per_epoch, num_labeled)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean cross-entropy over the samples with weight 1 (weight 0 marks padding)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def bootstrap(key: jax.Array, order: jax.Array, num_labeled: jax.Array, size: int) -> jax.Array:
    """`size` pool indices drawn from the labeled ones, order[:num_labeled].

    With replacement while fewer than `size` are labeled; otherwise (num_labeled == size,
    see `epoch_size`) every labeled sample once.
    """
    draws = order[jax.random.randint(key, (size,), 0, num_labeled)]
    if size > order.shape[0]:  # more than the pool holds: always with replacement
        return draws
    return jnp.where(num_labeled < size, draws, order[:size])


def grouped_value_and_grad(loss_sum, params, key, inputs, labels, weights, *, groups: int, mesh=None):
    """(loss, gradient) of sum(loss_sum over groups) / sum(weights), the same bits on any mesh.

    `loss_sum(params, key, inputs, labels, weights)` is one group's weighted loss sum, with
    its per-sample weighted losses as auxiliary output: the reported loss adds those up
    once they are gathered, so that it too is the same everywhere.
    The batch is cut into `groups` equal groups (padded with weight-0 groups to a whole
    number per device), each differentiated with its own key fold_in(key, g), and the
    groups' results are added in the order 0, 1, ..., groups - 1 whatever device holds them.
    """
    devices = mesh.size if is_split(mesh) else 1
    padded = -(-groups // devices) * devices

    def cut(x):
        x = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        return jnp.pad(x, [(0, padded - groups)] + [(0, 0)] * (x.ndim - 1))

    keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(padded))
    parts = (keys, cut(inputs), cut(labels), cut(weights))

    def each_group(params, keys, inputs, labels, weights):
        def one(part):
            (_, losses), grads = jax.value_and_grad(loss_sum, has_aux=True)(params, *part)
            return losses, grads

        return jax.lax.map(one, (keys, inputs, labels, weights))

    if is_split(mesh):
        spec = jax.sharding.PartitionSpec(DATA)
        each_group = jax.shard_map(
            each_group, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(),) + (spec,) * 4, out_specs=spec,
            check_vma=False,  # the native kernels (custom calls) carry no varying-axis types
        )  # fmt: skip
    losses, grads = replicated(each_group(params, *parts), mesh)

    def in_order(x):  # x[0] + x[1] + ... + x[groups - 1], added in that order
        return functools.reduce(jnp.add, [x[g] for g in range(groups)])

    count = jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(losses[:groups]) / count, jax.tree.map(lambda x: in_order(x) / count, grads)


@functools.partial(jax.jit, static_argnames=("model", "config", "samples_per_epoch", "mesh"))
def train(
    key: jax.Array,
    model: Model,
    inputs: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    num_labeled: jax.Array,
    *,
    config: TrainConfig,
    samples_per_epoch: int,
    mesh=None,
) -> tuple[dict, jax.Array]:
    """Trains freshly initialised parameters on the labeled part of a pool.

    Args:
      key: PRNG key for the initialisation, the bootstrap, the shuffles and dropout.
      model: the model (`jal.models`), initialised afresh.
      inputs: [P, *model.input_shape] normalised pool inputs.
      labels: [P] int32 labels, read only at labeled indices.
      order: [P] int32 pool indices, the first `num_labeled` of which are labeled.
      num_labeled: scalar int32, at least 1.
      config: hyperparameters.
      samples_per_epoch: `epoch_size(num_labeled, config)`, static.
      mesh: the devices `config.groups` gradient groups are spread over (`jal.sharding`).

    Returns:
      The trained parameters and the mean training loss of each epoch [epochs].
    """
    chex.assert_shape(inputs, (None, *model.input_shape))
    chex.assert_shape([labels, order], (inputs.shape[0],))
    init_key, boot_key, epochs_key = jax.random.split(key, 3)
    optimizer = make_optimizer(config)
    params = model.init(init_key)
    sample = bootstrap(boot_key, order, num_labeled, samples_per_epoch)

    batch = config.batch_size
    steps = -(-samples_per_epoch // batch)
    # The last batch of an epoch is partial, as with a DataLoader without drop_last:
    # padding with weight 0 keeps every batch the same shape.
    weights = (jnp.arange(steps * batch) < samples_per_epoch).astype(jnp.float32).reshape(steps, batch)

    def loss_fn(params, key, batch_inputs, batch_labels, batch_weights):
        return weighted_cross_entropy(model.logits(params, batch_inputs, key), batch_labels, batch_weights)

    def loss_sum(params, key, batch_inputs, batch_labels, batch_weights):
        losses = optax.softmax_cross_entropy_with_integer_labels(model.logits(params, batch_inputs, key), batch_labels)
        return jnp.sum(losses * batch_weights), losses * batch_weights

    def train_step(carry, step_input):
        params, opt_state = carry
        key, indices, batch_weights = step_input
        batch = (key, inputs[indices], labels[indices], batch_weights)
        if config.groups == 1:
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        else:
            loss, grads = grouped_value_and_grad(loss_sum, params, *batch, groups=config.groups, mesh=mesh)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(carry, key):
        shuffle_key, step_key = jax.random.split(key)
        shuffled = jax.random.permutation(shuffle_key, sample)
        # Padding repeats real samples (weight 0), so no unlabeled index is ever read.
        indices = jnp.pad(shuffled, (0, steps * batch - samples_per_epoch), mode="wrap").reshape(steps, batch)
        carry, losses = jax.lax.scan(train_step, carry, (jax.random.split(step_key, steps), indices, weights))
        # Mean over samples, the last (partial) batch weighted by its size.
        return carry, jnp.sum(losses * weights.sum(axis=1)) / samples_per_epoch

    (params, _), epoch_losses = jax.lax.scan(
        epoch, (params, optimizer.init(params)), jax.random.split(epochs_key, config.epochs)
    )
    return params, epoch_losses
