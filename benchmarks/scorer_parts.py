"""Where the factorised scorer's time goes: each piece jitted alone, chunked as the scorer chunks.

    .venv/bin/python -m benchmarks.scorer_parts [--inputs 2048] [--samples 32] [--chunk 32] [--reps 5]

Prints the median seconds of each piece over `--inputs` random images (speed does not
depend on the values), the pieces interleaved so that all see the same machine load.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

import jal.native
from benchmarks.timing import interleaved_medians
from jal.acquire.estimators import bald
from jal.models.lenet5 import DROPOUT_RATE, LeNet5, conv1_features, conv2_block_xla, init_params, mc_head, sample_masks
from jal.runtime import keep_freed_memory
from jal.scoring import mc_log_probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    n, k, chunk = args.inputs, args.samples, args.chunk
    params = init_params(jax.random.key(0))
    c2 = params["conv2"]
    key = jax.random.key(1)
    images = jax.random.normal(key, (n, 28, 28, 1))

    def masks_of(positions):
        return jax.vmap(lambda i: sample_masks(jax.random.fold_in(key, i), (k,)))(positions)

    conv1, head = functools.partial(conv1_features, params), functools.partial(mc_head, params)
    positions = jnp.arange(n)
    masks = masks_of(positions)
    z = conv1(images)
    features = conv2_block_xla(z, c2["kernel"], c2["bias"], masks)

    def chunked(fn):  # fn over chunks of `chunk` inputs under lax.map, as the scorer runs
        def run(*arrays):
            split = jax.tree.map(lambda a: a.reshape(-1, chunk, *a.shape[1:]), arrays)
            return jax.lax.map(lambda xs: fn(*xs), split)

        return jax.jit(run)

    def whole(model):  # the scorer as `jal.scoring` runs it, the model's MC form chunked
        return jax.jit(lambda x: bald(mc_log_probs(model, params, x, key=key, mc_samples=k, chunk_size=chunk)))

    pieces = {
        "dropout masks": (chunked(masks_of), positions),
        "conv1, pool, ReLU": (chunked(conv1), images),
        "conv2 block, XLA ops": (chunked(lambda z, m: conv2_block_xla(z, c2["kernel"], c2["bias"], m)), z, masks),
        "fc1, fc2, log-softmax": (chunked(head), features, masks),
        "BALD": (chunked(bald), head(features, masks)),
        "whole scorer, XLA ops": (whole(LeNet5(scorer="factorised_xla")), images),
    }
    if jal.native.available():
        block = chunked(
            lambda z, m: jal.native.conv2_block(z, c2["kernel"], c2["bias"], m.conv1, m.conv2, rate=DROPOUT_RATE)
        )
        pieces["conv2 block, native kernel"] = (block, z, masks)
        pieces["whole scorer, native kernel"] = (whole(LeNet5(scorer="factorised")), images)
    medians = interleaved_medians(pieces, args.reps)
    print(f"{n} inputs, K = {k}, chunks of {chunk}, median of {args.reps}:")
    for name, median in medians.items():
        print(f"  {name:28s} {median:6.3f} s" + (f"  ({n * k / median:,.0f} passes/s)" if "whole" in name else ""))


if __name__ == "__main__":
    main()
