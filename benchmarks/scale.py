"""Pools of 10^4 to 10^7 inputs, streamed from disk: scoring speed, the streamed loop, peak memory.

    .venv/bin/python -m benchmarks.scale                  # writes benchmarks/scale-results.{json,md} and scale.png
    .venv/bin/python -m benchmarks.scale --quick          # pools up to 10^5, into --dir: checks the script

The data are written once to --dir (default /tmp/jal-scale; 1.5 GB): a folder of .npy
files, `jal run --data`'s format, with 10^7 64-dim uint8 feature vectors from 10 noisy
clusters (an embedding-like stand-in: speed and memory do not depend on the values) and
10^4 test vectors; and 10^6 MNIST-shaped images (MNIST's, tiled and shifted, as
`benchmarks.large_pool` writes them). Every point runs in a fresh process, and its peak
resident memory is that process's own (`ru_maxrss` from `os.wait4`). Linux carries a
parent's high-water mark into a child across fork and exec, so this script keeps its own
memory small: it writes the data in a child process too.

* scoring: `jal.score_pool` over a random pool of P inputs drawn from the training split
  (`jal.data.make_pool`), read through the memmap by `jal.data.host.PoolRows`, as `jal run
  --stream` reads it, and normalised on the device. The `mlp` with one hidden layer of 128
  at P = 10^4, 10^5, 10^6, 10^7 (K = 32) and at K = 8, 32, 128 (P = 10^6); LeNet-5 (its
  default factorised scorer) at P = 10^4, 10^5, 10^6 (K = 32). Compilation is done first,
  on one batch, and not timed.
* the streamed loop: `jal run --stream` over the whole 10^7 pool for 3 rounds (20 initial
  labels, 2 acquisitions of 10, K = 32, float16 history), timed round by round from its
  metrics.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
FEATURES, CLASSES, TEST = 64, 10, 10_000
BLOCK = 1_000_000  # feature vectors written at a time
LIMIT_MB = 2048  # the memory every point must stay under


def build_features(folder: Path, size: int) -> None:
    """x_train [size, 64] uint8 and its labels, x_test and y_test: a `jal run --data` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centers = rng.uniform(40, 215, (CLASSES, FEATURES))

    def write(name: str, n: int) -> None:
        x = np.lib.format.open_memmap(folder / f"x_{name}.npy", mode="w+", dtype=np.uint8, shape=(n, FEATURES))
        y = np.lib.format.open_memmap(folder / f"y_{name}.npy", mode="w+", dtype=np.int32, shape=(n,))
        for start in range(0, n, BLOCK):
            labels = rng.integers(0, CLASSES, min(BLOCK, n - start))
            noise = rng.integers(-40, 41, (len(labels), FEATURES))
            x[start : start + len(labels)] = np.clip(centers[labels] + noise, 0, 255)
            y[start : start + len(labels)] = labels
        x.flush()
        y.flush()

    write("test", TEST)
    write("train", size)  # last: its presence says the folder is whole


def score_point(model_name: str, data: str, pool_size: int, k: int) -> dict:
    """Scores one pool in this process; the caller's process measures its peak memory."""
    import jax

    from jal.data import from_training, make_pool
    from jal.data.host import PoolRows
    from jal.data.mnist import NORMALIZATION
    from jal.models import build_model
    from jal.runtime import keep_freed_memory
    from jal.scoring import score_pool

    keep_freed_memory()  # as `jal`'s command line does
    if model_name == "lenet5":
        split = np.load(data, mmap_mode="r").reshape(-1, 28, 28, 1)  # [N, 28, 28] as written
        normalization, model = NORMALIZATION, build_model("lenet5", (28, 28, 1), CLASSES)
    else:
        split = np.load(Path(data) / "x_train.npy", mmap_mode="r")
        # The first 65,536 inputs' statistics: the timing does not depend on them.
        normalization = from_training(split[:65_536])
        model = build_model("mlp", (FEATURES,), CLASSES, hidden_sizes=(128,))
    indices = make_pool(len(split), pool_size, seed=1)
    params = model.init(jax.random.key(0))
    score = functools.partial(
        score_pool, model, params, key=jax.random.key(1), mc_samples=k, normalization=normalization
    )
    score(PoolRows(split, indices[:8192]))  # compiles the batch shape every pool uses
    start = time.perf_counter()
    scores = score(PoolRows(split, indices))
    seconds = time.perf_counter() - start
    assert scores.shape == (pool_size,) and np.isfinite(scores).all()
    return {"seconds": seconds}


def in_fresh_process(argv: list[str]) -> tuple[dict | None, float, float]:
    """(what the process printed last as JSON or None, its wall seconds, its peak resident MB)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    lines = output.strip().splitlines()
    return (json.loads(lines[-1]) if lines else None), seconds, usage.ru_maxrss / 1024


def scoring(model_name: str, data: Path, pool_size: int, k: int) -> dict:
    argv = [sys.executable, "-m", "benchmarks.scale", "--point", model_name, str(data), str(pool_size), str(k)]
    result, _, peak_mb = in_fresh_process(argv)
    seconds = result["seconds"]
    point = {"kind": "scoring", "model": model_name, "pool_size": pool_size, "mc_samples": k, "seconds": seconds}
    point.update(inputs_per_s=pool_size / seconds, passes_per_s=pool_size * k / seconds, peak_rss_mb=peak_mb)
    print(json.dumps(point), flush=True)
    return point


def streamed_run(data: Path, pool_size: int, out: Path) -> dict:
    """`jal run --stream` for 3 rounds over `pool_size` inputs; its wall time, rounds and peak memory."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "jal", "run", "--out", str(out), "--data", str(data), "--model", "mlp",
            "--hidden-sizes", "128", "--pool-size", str(pool_size), "--initial", "20", "--acquire", "10",
            "--iterations", "2", "--mc-samples", "32", "--stream", "--history-dtype", "float16", "--quiet"]  # fmt: skip
    _, seconds, peak_mb = in_fresh_process(argv)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    point = {"kind": "streamed run", "model": "mlp", "pool_size": pool_size, "mc_samples": 32, "seconds": seconds,
             "round_seconds": [m["seconds"] for m in metrics], "test_accuracy": [m["test_accuracy"] for m in metrics],
             "pool_scores_mb": (out / "pool_scores.npy").stat().st_size / 2**20, "peak_rss_mb": peak_mb,
             "command": " ".join(["jal", *argv[3:]])}  # fmt: skip
    print(json.dumps(point), flush=True)
    return point


def markdown(points: list[dict]) -> str:
    rows = ["| what | model | pool | K | seconds | inputs/s | MC passes/s | peak RSS (MB) |", "| --- " * 8 + "|"]
    for p in points:
        if p["kind"] == "scoring":
            rate = f"{p['inputs_per_s']:,.0f} | {p['passes_per_s']:,.0f}"
            seconds = f"{p['seconds']:,.1f}"
        else:  # a round trains, scores the pool and the test set, and chooses
            rounds = p["round_seconds"]
            seconds = f"{p['seconds']:,.0f} in all; rounds: " + ", ".join(f"{s:,.0f}" for s in rounds)
            rate = f"{p['pool_size'] * len(rounds) / sum(rounds):,.0f} (whole rounds) | "
        rows.append(f"| {p['kind']} | {p['model']} | {p['pool_size']:,} | {p['mc_samples']} | {seconds} | {rate} | "
                    f"{p['peak_rss_mb']:,.0f} |")  # fmt: skip
    return "\n".join(rows) + "\n"


def plot(points: list[dict], k_size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, k_ax, memory_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    scored = [p for p in points if p["kind"] == "scoring"]
    for model, marker in (("mlp", "o"), ("lenet5", "s")):
        by_size = sorted((p for p in scored if p["model"] == model and p["mc_samples"] == 32),
                         key=lambda p: p["pool_size"])  # fmt: skip
        if by_size:
            sizes = [p["pool_size"] for p in by_size]
            rate_ax.plot(sizes, [p["inputs_per_s"] for p in by_size], marker=marker, label=f"{model}, K = 32")
            memory_ax.plot(sizes, [p["peak_rss_mb"] for p in by_size], marker=marker, label=f"{model} scoring")
    by_k = sorted(
        (p for p in scored if p["model"] == "mlp" and p["pool_size"] == k_size), key=lambda p: p["mc_samples"]
    )
    k_ax.plot([p["mc_samples"] for p in by_k], [p["inputs_per_s"] for p in by_k], marker="o", label="mlp")
    k_ax.set_title(f"scoring speed against K, pool of {k_size:,}")
    for p in points:
        if p["kind"] == "streamed run":
            memory_ax.scatter([p["pool_size"]], [p["peak_rss_mb"]], marker="*", s=150, color="C3",
                              label="jal run --stream", zorder=3)  # fmt: skip
    memory_ax.axhline(LIMIT_MB, color="gray", linestyle="--", label="2 GiB")
    rate_ax.set(xscale="log", yscale="log", xlabel="pool size", ylabel="inputs scored / s", title="scoring speed")
    k_ax.set(xscale="log", yscale="log", xlabel="K (MC samples)", ylabel="inputs scored / s")
    k_ax.set_xticks([8, 32, 128], ["8", "32", "128"])
    memory_ax.set(xscale="log", xlabel="pool size", ylabel="peak resident memory (MB)", title="peak memory",
                  ylim=(0, LIMIT_MB * 1.15))  # fmt: skip
    for ax in (rate_ax, k_ax, memory_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/jal-scale"))
    parser.add_argument("--out", type=Path, help="folder for scale-results.json, .md and scale.png (default: "
                        "benchmarks/, with --quick --dir)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="pools up to 10^5, to check the script")
    parser.add_argument("--point", nargs=4, help=argparse.SUPPRESS)  # one measurement, in its own process
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)  # the data, in a process of their own
    args = parser.parse_args()
    if args.point:
        model_name, data, size, k = args.point
        print(json.dumps(score_point(model_name, data, int(size), int(k))))
        return
    largest = args.build or (10**5 if args.quick else 10**7)
    features, images = args.dir / f"features-{largest}", args.dir / f"images-{largest // 10}.npy"
    if args.build:
        from benchmarks.large_pool import build_pool

        build_features(features, largest)
        build_pool(images, largest // 10)
        return
    if not ((features / "x_train.npy").exists() and images.exists()):
        in_fresh_process([sys.executable, "-m", "benchmarks.scale", "--dir", str(args.dir), "--build", str(largest)])
    sizes = [10**e for e in range(4, 8) if 10**e <= largest]
    k_size = sizes[-2]
    points = [scoring("mlp", features, size, 32) for size in sizes]
    points += [scoring("mlp", features, k_size, k) for k in (8, 128)]
    points += [scoring("lenet5", images, size, 32) for size in sizes[:-1]]
    points.append(streamed_run(features, largest, args.dir / "run"))
    out = args.out or (args.dir if args.quick else HERE)
    machine = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
               "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()}  # fmt: skip
    (out / "scale-results.json").write_text(json.dumps({"machine": machine, "points": points}, indent=2) + "\n")
    (out / "scale-results.md").write_text(markdown(points))
    plot(points, k_size, out / "scale.png")
    print(markdown(points))


if __name__ == "__main__":
    main()
