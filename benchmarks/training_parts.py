"""Where a training step's time goes: one epoch of 157 Adam steps at batch 64, with parts of the backward pass cut.

    .venv/bin/python -m benchmarks.training_parts [--reps 3]

Cutting a layer's gradient (stop_gradient on its parameters) also removes every gradient
that only it needs: without conv1's, the gradient with respect to conv2's input (a matmul
and the col2im sum), pool1's and ReLU's backward go too. The variants run interleaved, so
all see the same machine load; random images, as speed does not depend on the values.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks.timing import interleaved_medians
from jal.models.convs import default_conv
from jal.models.lenet5 import LeNet5, init_params
from jal.runtime import keep_freed_memory
from jal.train import TrainConfig, make_optimizer, weighted_cross_entropy

STEPS, BATCH = 157, 64


def epoch_fn(conv: str, optimizer, frozen: tuple[str, ...], forward_only: bool = False):
    """One jitted epoch of STEPS steps; the parameters named in `frozen` get no gradient."""
    model = LeNet5(conv=conv)

    def loss_fn(params, key, images, labels):
        params = {name: jax.lax.stop_gradient(p) if name in frozen else p for name, p in params.items()}
        batch_logits = model.logits(params, images, key)  # dropout masks drawn from `key`, as training draws them
        return weighted_cross_entropy(batch_logits, labels, jnp.ones(images.shape[0]))

    def step(carry, batch):
        params, opt_state = carry
        if forward_only:
            return carry, loss_fn(params, *batch)
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def epoch(params, keys, images, labels):
        return jax.lax.scan(step, (params, optimizer.init(params)), (keys, images, labels))[1]

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    conv = default_conv(native=True)  # what training runs here: the native kernel where it builds
    optimizer = make_optimizer(TrainConfig())
    key = jax.random.key(0)
    inputs = (
        init_params(key),
        jax.random.split(key, STEPS),
        jax.random.normal(key, (STEPS, BATCH, 28, 28, 1)),
        jax.random.randint(key, (STEPS, BATCH), 0, 10),
    )
    variants = {
        "full step": epoch_fn(conv, optimizer, ()),
        "full step, im2col convolutions": epoch_fn("im2col", optimizer, ()),
        "without conv1's gradient": epoch_fn(conv, optimizer, ("conv1",)),
        "without conv1's and conv2's": epoch_fn(conv, optimizer, ("conv1", "conv2")),
        "forward only": epoch_fn(conv, optimizer, (), forward_only=True),
    }
    medians = interleaved_medians({name: (epoch, *inputs) for name, epoch in variants.items()}, args.reps)
    print(f"{STEPS} steps at batch {BATCH}, {conv} convolutions, median of {args.reps}:")
    for name, median in medians.items():
        print(f"  {name:28s} {STEPS / median:6.1f} steps/s  {median / STEPS * 1e3:6.2f} ms/step")


if __name__ == "__main__":
    main()
