"""What splitting costs or gains on this machine: 8 forced CPU devices against 1, and seeds in one program.

    .venv/bin/python -m benchmarks.devices_and_seeds [--out benchmarks/devices-and-seeds-cpu.json]

1. LeNet-5 scoring (`score_pool`, K=32, 10,000 MNIST-shaped inputs) on a mesh of the 8 CPU
   devices XLA_FLAGS=--xla_force_host_platform_device_count=8 makes, against 1 of them, in
   one process: both meshes share the same cores, so this measures the overhead of
   splitting, not a gain (forced devices are not more hardware).
2. `jal run --seeds 0,1,2` (one vmapped program) against the three seeds run one after
   another in one process, on scikit-learn's digits with the MLP: wall time of each.
Each timing is the best of `--repeats`, after a warm-up that compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICES = """
import json, sys, time, jax, numpy as np
from jal.models.lenet5 import LeNet5
from jal.scoring import score_pool
from jal.sharding import data_mesh
repeats = int(sys.argv[1])
model = LeNet5()
params = model.init(jax.random.key(0))
x = np.asarray(jax.random.normal(jax.random.key(1), (10_000, 28, 28, 1)))
out = {}
for d in (1, 8):
    mesh = data_mesh(jax.devices()[:d])
    score = lambda: score_pool(model, params, x, key=jax.random.key(2), mc_samples=32, mesh=mesh)
    score()
    best = min((lambda t: (score(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(repeats))
    out[d] = {"seconds": best, "passes_per_s": 32 * len(x) / best}
print(json.dumps(out))
"""


def devices(repeats: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", DEVICES, str(repeats)], capture_output=True, text=True, env=env,
                            check=True)  # fmt: skip
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {**timings, "overhead_8_vs_1": timings["8"]["seconds"] / timings["1"]["seconds"]}


def seeds(repeats: int) -> dict:
    import numpy as np
    from sklearn.datasets import load_digits

    from jal.cli import main

    flags = ["--model", "mlp", "--mc-samples", "32", "--epochs", "2", "--iterations", "5", "--acquire", "10",
             "--initial", "20", "--quiet"]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        x, y = load_digits(return_X_y=True)
        data = folder / "digits.npz"
        np.savez(data, x_train=x[:1400].astype(np.float32), y_train=y[:1400], x_test=x[1400:].astype(np.float32),
                 y_test=y[1400:])  # fmt: skip
        runs = iter(range(10**6))

        def batched() -> None:
            assert main(["run", "--data", str(data), "--out", str(folder / f"b{next(runs)}"), "--seeds", "0,1,2",
                         *flags]) == 0  # fmt: skip

        def sequential() -> None:
            for seed in (0, 1, 2):
                assert main(["run", "--data", str(data), "--out", str(folder / f"s{next(runs)}"), "--seed", str(seed),
                             *flags]) == 0  # fmt: skip

        timings = {}
        for name, fn in (("one_program", batched), ("sequential", sequential)):
            fn()  # compiles
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            timings[name] = best
    return {**timings, "speedup": timings["sequential"] / timings["one_program"], "seeds": 3, "iterations": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/devices-and-seeds-cpu.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import jax

    results = {
        "machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__}",
        "devices": devices(args.repeats),
        "seeds": seeds(args.repeats),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
