"""Training a fresh model on the labeled set, as the reference does at every iteration.

Adam (lr 5e-4) with PyTorch's `weight_decay` semantics (L2 added to the gradient before
Adam, not AdamW), batch 64, a few epochs over a bootstrap sample of max(10,000, |labeled|)
draws from the labeled set, reshuffled each epoch. The whole run is one jitted function:
epochs and steps under `lax.scan`, array shapes independent of how many samples are
labeled, so nothing recompiles as the labeled set grows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jal.models import Model


class TrainConfig(NamedTuple):
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    min_samples_per_epoch: int = 10_000


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


@functools.partial(jax.jit, static_argnames=("model", "config", "samples_per_epoch"))
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

    def train_step(carry, step_input):
        params, opt_state = carry
        key, indices, batch_weights = step_input
        loss, grads = jax.value_and_grad(loss_fn)(params, key, inputs[indices], labels[indices], batch_weights)
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
