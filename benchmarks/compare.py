"""jal against the PyTorch reference, side by side in one process, interleaved.

    bin/bench                      # full benchmark, writes benchmarks/results.json
    bin/bench --quick              # a smaller, faster pass

Measures, alternating the two implementations so that both see the same machine load:
scoring throughput (MC forward passes per second at K=32, each implementation chunking as
it prefers; jal once as it runs by default, `LeNet5()` with its native CPU kernel where
that builds, and once in XLA ops only, `LeNet5(scorer="factorised_xla")`), training steps
per second (batch 64; jal trains `LeNet5(conv=default_conv(native=True))`, with the native
training kernel where it builds), and one full active-learning iteration
(train 3 epochs over a 10,000-sample bootstrap, score a 10,000-sample pool and the
10,000-sample test set). Prints medians and jal/PyTorch ratios and writes JSON. First
checks that the two give the same deterministic logits for the same weights. Here both run
on the CPU; `side_by_side` is also what `benchmarks.device` runs on a GPU (PyTorch on CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jal.native
from benchmarks import torch_reference as ref
from jal import loop
from jal.acquire.estimators import bald
from jal.chunks import default_chunk_size
from jal.data import make_pool
from jal.data.mnist import load_mnist
from jal.models.convs import default_conv
from jal.models.lenet5 import LeNet, LeNet5, init_params, params_from_torch
from jal.runtime import keep_freed_memory
from jal.scoring import mc_log_probs
from jal.store import versions
from jal.train import TrainConfig, train

K = 32


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_data(size: int):
    """Pool and test images and labels of real MNIST (`load_mnist`: $JAL_MNIST_DIR, else the repository's copy)."""
    mnist = load_mnist()
    pool = make_pool(len(mnist.x_train), size)
    return (
        mnist.normalization.apply(mnist.x_train[pool]),
        mnist.y_train[pool].astype(np.int64),
        mnist.normalization.apply(mnist.x_test[:size]),
        mnist.y_test[:size].astype(np.int64),
        "MNIST",
    )


def check_logits(images: np.ndarray) -> float:
    """The largest difference of the two implementations' deterministic logits, given the same weights.

    Both compute in full float32 (PyTorch on the CPU, jal at the highest matmul precision),
    so that the check is of the implementations, not of a GPU's TF32 or a TPU's bfloat16 passes.
    """
    torch.manual_seed(0)
    model = ref.TorchLeNet().eval()
    with torch.no_grad():
        expected = model(ref.to_nchw(images)).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(LeNet().apply({"params": params_from_torch(model.state_dict())}, jnp.asarray(images)))
    return float(np.abs(got - expected).max())


def side_by_side(*, quick: bool, torch_device: str | None = "cpu", deadline: float = math.inf) -> dict:
    """jal on this process's JAX backend against the PyTorch reference on `torch_device`, interleaved.

    `torch_device` None times jal alone (no reference is comparable there). Past `deadline`
    (a `time.perf_counter()` value) a benchmark keeps the repetitions it has, at least one,
    and those not started are skipped; `cut` names both. Returns the report's measurements.
    """
    reps = 2 if quick else 3
    iteration_reps = 1 if quick else 2
    size = 2_000 if quick else 10_000
    score_size = 1_024 if quick else 2_048

    pool_x, pool_y, test_x, test_y, source = load_data(size)
    backend = jax.default_backend()
    print(f"data: {source}, pool {size}, test {size}; jax backend {backend}; the reference on {torch_device or '-'}")
    print(f"jal's native CPU kernel: {'built' if jal.native.available() else 'not available, XLA ops only'}")
    max_diff = check_logits(pool_x[:256])
    print(f"deterministic logits, same weights: max |jal - torch| = {max_diff:.2e}")
    assert max_diff < 1e-4, "jal and the PyTorch reference disagree"

    # Training's convolution is the model's setting: the native kernel where it builds
    # (what LeNet5's conv "auto" picks on the CPU), else im2col; XLA's on GPU and TPU.
    training_conv = default_conv(native=True)
    model = LeNet5(conv=training_conv)
    config = TrainConfig()
    print(f"jal trains with {training_conv} convolutions, scores in chunks of {default_chunk_size()}")
    key = jax.random.key(0)
    params = init_params(key)
    jal_pool = jnp.asarray(pool_x)
    jal_scores_x = jal_pool[:score_size]

    def jal_score(scorer="factorised"):
        scored = mc_log_probs(LeNet5(scorer=scorer), params, jal_scores_x, key=key, mc_samples=K)
        bald(scored).block_until_ready()

    labels = jnp.asarray(pool_y, jnp.int32)
    order = jnp.arange(size, dtype=jnp.int32)
    steps = -(-config.min_samples_per_epoch // config.batch_size)
    one_epoch = config._replace(epochs=1)

    def jal_train():
        jax.block_until_ready(
            train(key, model, jal_pool, labels, order, jnp.int32(60), config=one_epoch, samples_per_epoch=10_000)
        )

    data = loop.Data(jal_pool, jnp.asarray(test_x), jnp.asarray(test_y, jnp.int32))
    loop_config = loop.LoopConfig(model=model, train=config)
    state = loop.init(key, size, np.arange(60), pool_y[:60])

    def jal_iteration():
        jax.block_until_ready(loop.propose(state, data, loop_config))

    # Each benchmark: the implementations, timed in turn at every repetition. On the CPU,
    # scoring also times jal in XLA ops only (what runs where the native kernel cannot be
    # built), so that both of jal's ratios share the reference's times; elsewhere jal's
    # scorer is XLA ops already.
    scoring = {"jal": jal_score}
    if backend == "cpu":
        scoring["jal_xla"] = lambda: jal_score("factorised_xla")
    benchmarks = {
        "scoring": (scoring, reps, score_size * K, "MC forward passes/s"),
        "training": ({"jal": jal_train}, reps, steps, "steps/s"),
        "iteration": ({"jal": jal_iteration}, iteration_reps, 1, "iterations/s"),
    }
    if torch_device is not None:
        for name, fn in reference(pool_x, pool_y, test_x, score_size, torch_device).items():
            benchmarks[name][0]["torch"] = fn

    results, cut = {}, []
    for name, (impls, n, work, unit) in benchmarks.items():
        if time.perf_counter() > deadline:
            cut.append(f"{name}: not run, past the deadline")
            continue
        for impl, fn in impls.items():
            if impl != "torch":
                fn()  # compile
        times = {impl: [] for impl in impls}
        for rep in range(n):
            if rep > 0 and time.perf_counter() > deadline:
                cut.append(f"{name}: {rep} of {n} repetitions, past the deadline")
                break
            for impl, fn in impls.items():
                times[impl].append(timed(fn))
        medians = {impl: statistics.median(t) for impl, t in times.items()}
        results[name] = {"unit": unit, "work_per_run": work, "seconds": times}
        for impl in impls:
            results[name][f"{impl}_per_s"] = work / medians[impl]
        for impl in [impl for impl in impls if impl != "torch"]:
            variant = impl.removeprefix("jal").removeprefix("_")  # "" for jal as it runs by default
            label = f"jal ({variant} only)" if variant else "jal"
            line = f"{name:>9}: {label} {work / medians[impl]:10.2f} {unit}"
            if "torch" in impls:
                ratio = medians["torch"] / medians[impl]
                results[name][f"ratio_{variant}" if variant else "ratio"] = ratio
                line += f", torch {work / medians['torch']:10.2f}, jal/torch {ratio:.1f}x"
            print(line)

    return {
        "backend": backend,
        "native_kernel": jal.native.available(),
        "training_conv": training_conv,
        "chunk_size": default_chunk_size(),
        "torch_device": torch_device,
        "data": source,
        "mc_samples": K,
        "max_logit_difference": max_diff,
        "results": results,
        "cut": cut,
    }


def reference(pool_x, pool_y, test_x, score_size: int, device: str) -> dict:
    """The PyTorch reference's timed calls by benchmark: its models on `device`, its data moved there batch by batch."""
    device = torch.device(device)
    # CUDA runs asynchronously: a timed call ends when the device has finished its work.
    finish = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    scores_x = ref.to_nchw(pool_x[:score_size])
    scoring_model = ref.TorchLeNet().to(device)
    pool, labels, test = ref.to_nchw(pool_x), torch.from_numpy(pool_y), ref.to_nchw(test_x)

    def score():
        ref.bald_scores(scoring_model, scores_x, K)

    def train_epoch():
        ref.train(ref.TorchLeNet().to(device), pool[:60], labels[:60], epochs=1)
        finish()

    def iteration():
        model = ref.TorchLeNet().to(device)
        ref.train(model, pool[:60], labels[:60], epochs=3)
        ref.bald_scores(model, pool, K)
        ref.bald_scores(model, test, K)

    return {"scoring": score, "training": train_epoch, "iteration": iteration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller pool")
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args()
    print(f"glibc keeps freed memory (for both implementations): {keep_freed_memory()}")
    measured = side_by_side(quick=args.quick)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        **measured,
        "versions": {**versions(), "torch": torch.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
