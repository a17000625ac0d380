"""One accelerator's benchmark, in one process under a time budget: what `bin/bench-device` runs on a GPU or TPU.

    bin/bench-device                                    # writes benchmarks/device-results-<backend>.json
    .venv/bin/python -m benchmarks.device --out benchmarks/device-results-gpu.json [--quick] [--budget-s 480]

In turn, each part ending by its share of the budget:

1. the device: `jax.devices()`, their kind, the backend, the versions;
2. MC-scoring throughput of LeNet-5 at K = 32 at chunk sizes around the backend's "auto"
   one (`jal.chunks`), to check that default on the device;
3. the side-by-side benchmark against the PyTorch reference (`benchmarks.compare`), with
   PyTorch on the same kind of device: CUDA beside a GPU, the CPU beside the CPU. PyTorch
   has no TPU backend comparable to jal's, so on a TPU jal is timed alone, and says so;
4. the reference experiment end to end: `jal run` with its defaults (LeNet-5, BALD, 100
   acquisitions) on the repository's MNIST, with the wall time of every round and the
   final test accuracy.

`--quick` makes every part smaller (the experiment: 3 acquisitions on a pool of 1,000),
to check the script on a CPU. The budget is checked before each part, between the
side-by-side's repetitions and between the experiment's rounds: a part not started by the
end of its share is skipped, the side-by-side keeps the repetitions it has, the experiment
stops before a round that would end past the budget, and "cut" lists what was left out.
The JSON is rewritten whole after every part, so even a run killed from outside leaves
the parts it finished.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import torch

from benchmarks.compare import K, side_by_side
from benchmarks.timing import interleaved_medians
from jal import experiment
from jal.acquire.estimators import bald
from jal.chunks import default_chunk_size
from jal.config import RunConfig, override
from jal.models.lenet5 import LeNet5, init_params
from jal.runtime import keep_freed_memory
from jal.scoring import mc_log_probs
from jal.store import read_config, versions, write_json

REPOSITORY_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"
# The experiment starts only with this fraction of the budget left: its first round compiles.
EXPERIMENT_MINIMUM = 0.25
# JAX's accelerator backends (plugins), whose versions a device's numbers depend on too.
ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "libtpu")


def device_record() -> dict:
    """What the numbers were measured on: JAX's devices and backend, the host, the versions."""
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    installed = {}
    for name in ACCELERATOR_PACKAGES:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "backend": jax.default_backend(),
        "devices": [str(device) for device in devices],
        "device_kind": devices[0].device_kind,
        "platform_version": getattr(devices[0].client, "platform_version", None),
        "memory_bytes": stats.get("bytes_limit"),
        "host": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": {
            **versions(),
            **installed,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "torch_cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
    }


def reference_device(backend: str) -> tuple[str | None, str]:
    """Where the PyTorch reference runs beside jal on `backend` (None: nowhere comparable), and why."""
    if backend == "cpu":
        return "cpu", "PyTorch on the same CPU"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda", f"PyTorch on CUDA: {torch.cuda.get_device_name()}"
    if backend == "gpu":
        return None, f"torch {torch.__version__} has no CUDA here (a CPU build?), so jal is timed alone"
    return None, f"PyTorch has no {backend} backend comparable to jal's (torch_xla is another program): jal alone"


def chunk_sizes(*, quick: bool) -> dict:
    """LeNet-5's MC-scoring throughput at K = 32 at chunk sizes around the backend's default, interleaved."""
    auto = default_chunk_size()
    sizes = sorted({32, 256, auto} if quick else {32, 128, 512, auto, 2048, 4096})
    size = 2_048 if quick else 10_000  # the reference's pool
    key = jax.random.key(0)
    params = init_params(key)
    inputs = jax.random.normal(key, (size, 28, 28, 1))

    def score(chunk_size: int) -> jax.Array:
        return bald(mc_log_probs(LeNet5(), params, inputs, key=key, mc_samples=K, chunk_size=chunk_size))

    medians = interleaved_medians({chunk: (score, chunk) for chunk in sizes}, reps=2 if quick else 3)
    for chunk, seconds in medians.items():
        print(f"chunk size {chunk:>5}: {size * K / seconds:12,.0f} MC passes/s{'  (auto)' if chunk == auto else ''}")
    return {
        "auto": auto,
        "inputs": size,
        "mc_samples": K,
        "passes_per_s": {str(chunk): size * K / seconds for chunk, seconds in medians.items()},
        "fastest": min(medians, key=medians.get),
        "cut": [],
    }


def compared(*, quick: bool, deadline: float) -> dict:
    """`benchmarks.compare.side_by_side` with the reference on the matching device."""
    device, why = reference_device(jax.default_backend())
    print(f"the reference: {why}")
    return {"reference": why, **side_by_side(quick=quick, torch_device=device, deadline=deadline)}


class _OutOfTime(Exception):
    """The next round of the experiment would end past the budget."""


def reference_experiment(*, iterations: int, pool_size: int | None, deadline: float, minimum_s: float) -> dict:
    """`jal run`'s reference experiment with `iterations` acquisitions on the repository's MNIST, until `deadline`."""
    if deadline - time.perf_counter() < minimum_s:
        return {"cut": [f"not started: under {minimum_s:.0f} s of the budget left for its compiling first round"]}
    changes = {"data.mnist_dir": str(REPOSITORY_MNIST), "iterations": iterations}
    if pool_size is not None:
        changes["data.pool_size"] = pool_size
    config = override(RunConfig(), changes)
    planned = iterations + 1
    rounds = []

    def on_round(metrics: dict) -> None:
        keep = ("iteration", "num_labeled", "test_accuracy", "test_nll", "acquired", "seconds")
        rounds.append({name: metrics[name] for name in keep})
        print(
            f"round {len(rounds)}/{planned}: {metrics['num_labeled']} labels, "
            f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['seconds']:.2f} s"
        )
        if len(rounds) < planned and time.perf_counter() + metrics["seconds"] > deadline:
            raise _OutOfTime

    cut = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        try:
            experiment.run(config, out, on_round=on_round)
        except _OutOfTime:
            cut.append(f"stopped after {len(rounds)} of {planned} rounds: the next would end past the budget")
        record = read_config(out)["record"]
    total = time.perf_counter() - start
    steady = [r["seconds"] for r in rounds[1:]]  # the first round also compiles
    return {
        "settings": changes,
        "record": record,
        "rounds_planned": planned,
        "rounds_done": len(rounds),
        "total_s": total,
        "first_round_s": rounds[0]["seconds"],
        "median_round_s": statistics.median(steady) if steady else None,
        "projected_total_s": rounds[0]["seconds"] + statistics.median(steady) * (planned - 1) if steady else None,
        "final_test_accuracy": rounds[-1]["test_accuracy"],
        "final_num_labeled": rounds[-1]["num_labeled"],
        "rounds": rounds,
        "cut": cut,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the JSON to write (default: benchmarks/device-results-<backend>.json)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for everything (default: 480)")
    parser.add_argument("--quick", action="store_true", help="smaller measurements; 3 iterations on a pool of 1,000")
    parser.add_argument("--iterations", type=int, help="the experiment's acquisitions (default: 100; --quick: 3)")
    args = parser.parse_args()
    start = time.perf_counter()
    keep_freed_memory()  # as `jal`'s command line does
    backend = jax.default_backend()
    out = Path(args.out or f"benchmarks/device-results-{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv,
        "budget_s": args.budget_s,
        "quick": args.quick,
        "device": device_record(),
        "cut": [],
        "complete": False,
    }
    device = report["device"]
    print(f"{backend}: {device['device_kind']} x {len(device['devices'])}; budget {args.budget_s:.0f} s")
    write_json(out, report)
    iterations = args.iterations if args.iterations is not None else 3 if args.quick else 100
    # Each part: the fraction of the budget by whose end it has finished (time one leaves goes
    # to the next), and what it measures by then.
    parts = {
        "chunk_sizes": (0.15, lambda deadline: chunk_sizes(quick=args.quick)),
        "side_by_side": (0.45, lambda deadline: compared(quick=args.quick, deadline=deadline)),
        "experiment": (
            1.0,
            lambda deadline: reference_experiment(
                iterations=iterations,
                pool_size=1_000 if args.quick else None,
                deadline=deadline,
                minimum_s=EXPERIMENT_MINIMUM * args.budget_s,
            ),
        ),
    }
    for name, (share, run) in parts.items():
        deadline = start + share * args.budget_s
        if time.perf_counter() > deadline:
            report["cut"].append(f"{name}: not run, past its share of the budget")
            continue
        print(f"-- {name}")
        report[name] = run(deadline)
        report["cut"] += [f"{name}: {why}" for why in report[name].pop("cut")]
        report["seconds"] = time.perf_counter() - start
        write_json(out, report)
    report.update(complete=not report["cut"], seconds=time.perf_counter() - start)
    write_json(out, report)
    print(f"wrote {out} in {report['seconds']:.0f} s" + "".join(f"\n  cut: {why}" for why in report["cut"]))


if __name__ == "__main__":
    main()
