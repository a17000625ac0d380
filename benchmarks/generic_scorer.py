"""The generic MC-dropout path (the forward vmapped over K dropout draws): throughput and memory.

    .venv/bin/python -m benchmarks.generic_scorer                  # writes benchmarks/generic-results-cpu.json
    .venv/bin/python -m benchmarks.generic_scorer --quick          # smaller sizes, well under a minute
    .venv/bin/python -m benchmarks.generic_scorer --out FILE --dir /tmp/jal-features

Two comparisons, each one's variants timed in turn at every repetition (`interleaved_medians`)
so that all see the same machine load; random inputs, as speed does not depend on the values.

a. LeNet-5 on 2,048 random 28x28x1 images, K=32, chunks of 32, through `jal.scoring.mc_log_probs`:
   MC forward passes/s of its factorised scorer (with the native CPU kernel where it
   builds), the factorised scorer in XLA ops only, and the generic vmapped path (the
   whole forward vmapped over the K masks; conv1, which no mask touches, once per input).
   All three get the same masks, so they must give the same log-probabilities (checked).
b. The `mlp` model (hidden sizes (128, 128)) on 1,000,000 random float32 feature vectors
   of dimension 256, a 1 GB .npy read through a memmap by `jal.scoring.score_pool` at
   K=32: passes/s and peak resident memory, measured in a subprocess of its own so that
   nothing else in this script counts in its peak. Then, on the first 65,536 vectors, the
   mlp with `jal.models.dropout.Dropout` (masks from bits) against the same network with
   `flax.linen.Dropout` (a random float per unit), and with no dropout at all (rate 0:
   the layers' arithmetic alone, computed once per input since nothing is random).

Medians of 5 repetitions for LeNet-5, 3 for the mlp comparison (1 each with --quick). The
feature vectors are written once to --dir (1 GB at full size) and reused by later runs.
The full run takes a few minutes on a 2-core CPU; the JSON holds every median and rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jal.native
from benchmarks.timing import interleaved_medians
from jal.acquire.estimators import bald
from jal.models import FlaxModel, Model, build_model
from jal.models.lenet5 import INPUT_SHAPE, LeNet5, init_params
from jal.models.mlp import MLP
from jal.runtime import keep_freed_memory
from jal.scoring import mc_log_probs, score_pool
from jal.store import versions

K, CHUNK, DIM = 32, 32, 256


# a. LeNet-5


def lenet_comparison(n: int, reps: int) -> dict:
    params = init_params(jax.random.key(0))
    key = jax.random.key(1)
    images = jax.random.normal(jax.random.key(2), (n, *INPUT_SHAPE))
    # Without the native kernel (no compiler, JAL_NATIVE=0, not the CPU) "factorised" runs XLA ops too.
    native = "factorised (native kernel)" if jal.native.available() else "factorised (no native kernel: XLA ops)"
    models = {
        native: LeNet5(scorer="factorised"),
        "factorised, XLA ops": LeNet5(scorer="factorised_xla"),
        "vmapped (generic path)": LeNet5(scorer="vmapped"),
    }

    def scorer(model):  # mc_log_probs is jitted, with the model static
        return lambda x: mc_log_probs(model, params, x, key=key, mc_samples=K, chunk_size=CHUNK)

    # Same masks, so the same log-probabilities up to float rounding (relative to their scale).
    reference = np.asarray(scorer(models["factorised, XLA ops"])(images))
    differences = {}
    for name, model in models.items():
        got = np.asarray(scorer(model)(images))
        differences[name] = float(np.abs(got - reference).max() / np.abs(reference).max())
        assert differences[name] < 1e-4, f"{name}: log-probabilities differ by {differences[name]:.1e} (relative)"

    medians = interleaved_medians({name: (scorer(model), images) for name, model in models.items()}, reps)
    return {
        "inputs": n,
        "mc_samples": K,
        "chunk_size": CHUNK,
        "reps": reps,
        "median_seconds": medians,
        "passes_per_s": {name: n * K / seconds for name, seconds in medians.items()},
        "max_relative_difference": differences,
    }


# b. The mlp on a large pool of feature vectors


def mlp_models() -> dict[str, Model]:
    """The mlp (default hidden sizes) with jal's dropout, flax's, and none; they share parameters."""
    mlp = build_model("mlp", (DIM,), 10)
    flax_dropout = MLP(mlp.hidden_sizes, mlp.num_classes, mlp.dropout_rate, dropout=nn.Dropout)
    return {
        "jal Dropout (bits)": mlp,
        "flax.linen.Dropout": FlaxModel((DIM,), 10, module=flax_dropout),
        "no dropout (rate 0)": build_model("mlp", (DIM,), 10, dropout_rate=0.0),
    }


def features_file(directory: str, n: int) -> Path:
    """A [n, DIM] float32 .npy of standard normal features, written once in blocks and reused."""
    path = Path(directory) / f"features_{n}x{DIM}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")  # renamed when complete, so a killed run leaves no bad file
        features = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, DIM))
        rng = np.random.default_rng(0)
        for start in range(0, n, 65_536):
            features[start : start + 65_536] = rng.standard_normal((min(65_536, n - start), DIM), np.float32)
        features.flush()
        del features
        partial.rename(path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM on Linux, else ru_maxrss.

    Not ru_maxrss on Linux: there a child's ru_maxrss starts at its parent's peak (carried
    over across fork and exec; measured: a child of a 500 MB parent reported 500 MB), and
    the large-pool run is a child of the LeNet benchmark. VmHWM is the child's own peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux; elsewhere check the unit


def anonymous_memory_peak():
    """Starts sampling the process's anonymous resident memory (Linux); returns a function giving its peak in MB.

    The peak resident memory counts file-backed pages besides the process's own memory:
    the libraries' code, and the memmap's pages read (clean pages, which the kernel drops
    under pressure; up to the whole 1 GB file). RssAnon, sampled every 20 ms, is the
    process's own memory alone.
    """
    status = Path("/proc/self/status")
    if not status.exists():
        return lambda: None
    peak = [0]

    def sample():
        while True:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    return lambda: peak[0] / 1024


def score_large_pool(path: str) -> dict:
    """Scores the whole file with the mlp through `score_pool` (run in a fresh process, see `main`)."""
    anonymous_peak = anonymous_memory_peak()
    features = np.load(path, mmap_mode="r")
    model = mlp_models()["jal Dropout (bits)"]
    params = model.init(jax.random.key(0))
    key = jax.random.key(1)
    score_pool(model, params, features[:8192], key=key, mc_samples=K)  # compile outside the timing
    compiled_rss_mb = peak_rss_mb()
    start = time.perf_counter()
    scores = score_pool(model, params, features, key=key, mc_samples=K)
    seconds = time.perf_counter() - start
    assert scores.shape == (len(features),) and np.isfinite(scores).all()
    return {
        "inputs": len(features),
        "dim": DIM,
        "file_mb": os.path.getsize(path) / 2**20,
        "seconds": seconds,
        "passes_per_s": len(features) * K / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_pool_mb": compiled_rss_mb,  # after importing and compiling, on 8,192 vectors
        "peak_anonymous_rss_mb": anonymous_peak(),
    }


def dropout_comparison(path: str, n: int, reps: int) -> dict:
    """The mlp with jal's dropout, flax's and none, on the first n vectors, interleaved."""
    features = np.load(path, mmap_mode="r")[:n]
    models = mlp_models()
    params = models["jal Dropout (bits)"].init(jax.random.key(0))
    key = jax.random.key(1)
    # Other masks, the same distribution: the mean BALD of the two agrees within MC noise.
    sample = jnp.asarray(features[:4096])
    means = {name: float(bald(mc_log_probs(models[name], params, sample, key=key, mc_samples=K)).mean())
             for name in ("jal Dropout (bits)", "flax.linen.Dropout")}  # fmt: skip
    a, b = means.values()
    assert abs(a - b) < 0.05 * max(a, b), f"mean BALD {a:.4f} against {b:.4f}"

    def scores(model):
        return score_pool(model, params, features, key=key, mc_samples=K)

    medians = interleaved_medians({name: (scores, model) for name, model in models.items()}, reps)
    return {
        "inputs": n,
        "reps": reps,
        "median_seconds": medians,
        "passes_per_s": {name: n * K / seconds for name, seconds in medians.items()},
        "speedup": medians["flax.linen.Dropout"] / medians["jal Dropout (bits)"],
        "mean_bald": means,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 LeNet inputs, 20,000 feature vectors, fewer reps")
    parser.add_argument("--out", default="benchmarks/generic-results-cpu.json")
    parser.add_argument("--dir", default="/tmp/jal-features", help="where the feature vectors' .npy is kept")
    parser.add_argument("--score-file", help=argparse.SUPPRESS)  # internal: the large-pool run's own process
    args = parser.parse_args()
    print(f"glibc keeps freed memory: {keep_freed_memory()}")
    if args.score_file:
        print(json.dumps(score_large_pool(args.score_file)))
        return

    lenet_inputs, pool_size, slice_size, reps = (256, 20_000, 8_192, 1) if args.quick else (2_048, 10**6, 65_536, 5)
    print(f"jax backend {jax.default_backend()}; native kernel {'built' if jal.native.available() else 'unavailable'}")

    lenet = lenet_comparison(lenet_inputs, reps)
    print(f"\na. LeNet-5, {lenet_inputs} inputs, K={K}, chunks of {CHUNK}, median of {reps}:")
    print("| scorer | s | MC passes/s | max relative difference |")
    print("| --- | --- | --- | --- |")
    for name, seconds in lenet["median_seconds"].items():
        rate, difference = lenet["passes_per_s"][name], lenet["max_relative_difference"][name]
        print(f"| {name} | {seconds:.3f} | {rate:,.0f} | {difference:.1e} |")

    path = features_file(args.dir, pool_size)
    # A fresh process, so its peak memory is the large-pool run's alone.
    command = [sys.executable, "-m", "benchmarks.generic_scorer", "--score-file", str(path)]
    pool = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
    dropout = dropout_comparison(str(path), min(slice_size, pool_size), max(reps - 2, 1))
    hidden = list(mlp_models()["jal Dropout (bits)"].hidden_sizes)
    print(f"\nb. mlp {DIM} -> {' -> '.join(map(str, hidden))} -> 10, K={K}, through score_pool from a memmap:")
    print(
        f"{pool['inputs']:,} vectors in {pool['seconds']:.1f} s: {pool['passes_per_s']:,.0f} MC passes/s; "
        f"peak resident memory {pool['peak_rss_mb']:,.0f} MB ({pool['peak_rss_before_pool_mb']:,.0f} MB before "
        f"the pool; file-backed pages included: libraries, the {pool['file_mb']:,.0f} MB file's pages read), "
        f"anonymous {pool['peak_anonymous_rss_mb'] or float('nan'):,.0f} MB"
    )
    print(f"| {dropout['inputs']:,} vectors, median of {dropout['reps']} | s | MC passes/s |")
    print("| --- | --- | --- |")
    for name, seconds in dropout["median_seconds"].items():
        print(f"| {name} | {seconds:.3f} | {dropout['passes_per_s'][name]:,.0f} |")
    print(f"masks from bits against flax's dropout: {dropout['speedup']:.2f}x")

    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "backend": jax.default_backend(),
        "native_kernel": jal.native.available(),
        "versions": versions(),
        "command": "python -m benchmarks.generic_scorer" + (" --quick" if args.quick else ""),
        "lenet5": lenet,
        "mlp": {"hidden_sizes": hidden, "mc_samples": K, "chunk_size": CHUNK, "pool": pool, "dropout": dropout},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
