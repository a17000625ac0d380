"""Scores a pool of a million images streamed from disk: throughput and peak memory.

    /usr/bin/time -v .venv/bin/python -m benchmarks.large_pool [--size 1000000] [--dir /tmp/jal-pool]

The pool is MNIST's training images (`jal.data.mnist.load_mnist`), tiled and
shifted by up to 2 pixels, written once as a uint8 .npy file and then read through a
memmap by `jal.score_pool` (LeNet-5, its default factorised scorer, K=32), which
normalises each batch on the device, so neither host nor device ever holds the whole pool.
"""

from __future__ import annotations

import argparse
import functools
import resource
import time
from pathlib import Path

import jax
import numpy as np

from jal.data.mnist import NORMALIZATION, load_mnist
from jal.models.lenet5 import LeNet5
from jal.runtime import keep_freed_memory
from jal.scoring import score_pool


def build_pool(path: Path, size: int) -> None:
    source = load_mnist().x_train[..., 0]  # [N, 28, 28]
    rng = np.random.default_rng(0)
    pool = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size, 28, 28))
    for start in range(0, size, len(source)):
        block = source[: min(len(source), size - start)]
        dy, dx = rng.integers(-2, 3, 2)
        pool[start : start + len(block)] = np.roll(block, (dy, dx), axis=(1, 2))
    pool.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/jal-pool")
    args = parser.parse_args()
    keep_freed_memory()
    path = Path(args.dir) / f"pool_{args.size}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_pool(path, args.size)
    # The file stays [N, 28, 28] (pools written before are reused); the model takes
    # [N, 28, 28, 1], and reshaping a memmap is a view that reads nothing.
    pool = np.load(path, mmap_mode="r").reshape(-1, 28, 28, 1)
    model = LeNet5()
    params = model.init(jax.random.key(0))
    score = functools.partial(score_pool, model, params, key=jax.random.key(1), normalization=NORMALIZATION)
    score(pool[:8192])  # compile outside the timing
    start = time.perf_counter()
    scores = score(pool)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert scores.shape == (args.size,) and np.isfinite(scores).all()
    print(
        f"scored {args.size} images at K=32 in {seconds:.1f} s: {args.size / seconds:.0f} images/s, "
        f"{32 * args.size / seconds:.0f} MC forward passes/s; peak resident memory {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
