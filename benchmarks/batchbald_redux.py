"""jal's BatchBALD against batchbald_redux (PyTorch, from PyPI), on identical log-probabilities.

    bin/bench-batchbald                  # N=10,000 pool, K=100, writes benchmarks/batchbald-results.json
    bin/bench-batchbald --quick          # a smaller pool

Both get the same [N, K, C] log-probabilities: a shared logit per input plus independent
noise per MC sample, so the samples disagree as a trained network's do (the time does not
depend on the values; the choice does, which is what the index check is for). Cases:

* exact: b=4 with M=1,000 on the full pool, and b=5 with M=10,000 on its first 1,000
  samples (batchbald_redux needs minutes per step with 10,000 configurations of 10,000
  candidates here), so every step enumerates all C^n configurations. Both run in float64
  (batchbald_redux's `dtype=torch.double`; jal with x64 on) and must choose the same
  indices. jal's float32 time, and whether it chooses the same, is reported too.
* sampled: b=10, M=10,000, the steps past the fifth drawing configurations, on the first
  1,000 samples. The draws differ between the two, so only the overlap of the chosen sets
  is reported.
* jal alone at b=100, M=10,000, float32, on the full pool.

The implementations alternate, repetition by repetition, so both see the same machine load;
each reports the median. jal's first call, which compiles, is timed separately.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # for the float64 case; float32 arrays stay float32
os.environ.setdefault("TQDM_DISABLE", "1")  # batchbald_redux's progress bars

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from batchbald_redux.batchbald import get_batchbald_batch  # noqa: E402

from jal.acquire.batchbald import batchbald  # noqa: E402
from jal.store import versions  # noqa: E402


def log_probs(n: int, k: int, c: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 1, c)) * 3 + rng.normal(size=(n, k, c)) * 1.5
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(name, lp, b, m, repeats, *, float32_too: bool = True):
    lp64, lp32 = jnp.asarray(lp, jnp.float64), jnp.asarray(lp, jnp.float32)
    lp_torch = torch.from_numpy(lp)
    key = jax.random.key(0)

    def ours(x):
        return lambda: np.asarray(batchbald(x, b, key=key, joint_samples=m)[0]).tolist()

    def theirs():
        return get_batchbald_batch(lp_torch, b, m, dtype=torch.double).indices

    compile64, _ = timed(ours(lp64))
    compile32, _ = timed(ours(lp32)) if float32_too else (None, None)
    times = {"jal float64": [], "batchbald_redux float64": [], "jal float32": []}
    for _ in range(repeats):
        t, jal64 = timed(ours(lp64))
        times["jal float64"].append(t)
        t, redux = timed(theirs)
        times["batchbald_redux float64"].append(t)
        if float32_too:
            t, jal32 = timed(ours(lp32))
            times["jal float32"].append(t)
    result = {
        "case": name,
        "pool_size": len(lp),
        "batch_size": b,
        "num_samples": m,
        "median_seconds": {k: statistics.median(v) for k, v in times.items() if v},
        "all_seconds": {k: v for k, v in times.items() if v},
        "jal_first_call_seconds": {"float64": compile64, **({"float32": compile32} if float32_too else {})},
        "indices": {"jal float64": jal64, "batchbald_redux": redux, **({"jal float32": jal32} if float32_too else {})},
        "same_indices_float64": jal64 == redux,
        "overlap_float64": len(set(jal64) & set(redux)) / b,
    }
    if float32_too:
        result["same_indices_float32"] = jal32 == redux
    medians = result["median_seconds"]
    result["speedup_float64"] = medians["batchbald_redux float64"] / medians["jal float64"]
    if float32_too:
        result["speedup_float32"] = medians["batchbald_redux float64"] / medians["jal float32"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1,000-sample pool and fewer repetitions")
    parser.add_argument("--out", default="benchmarks/batchbald-results.json")
    args = parser.parse_args()
    n, k, repeats = (1_000, 100, 1) if args.quick else (10_000, 100, 3)
    lp = log_probs(n, k)

    results = [
        compare("exact", lp, 4, 1_000, repeats),
        compare("exact", lp[:1_000], 5, 10_000, 1),
        compare("sampled", lp[:1_000], 10, 10_000, 1, float32_too=False),
    ]
    lp32 = jnp.asarray(lp, jnp.float32)
    first, _ = timed(lambda: batchbald(lp32, 100, key=jax.random.key(0), joint_samples=10_000)[0].block_until_ready())
    again, _ = timed(lambda: batchbald(lp32, 100, key=jax.random.key(1), joint_samples=10_000)[0].block_until_ready())
    large = {"case": "jal only, b=100", "batch_size": 100, "num_samples": 10_000, "seconds": again, "first": first}

    print(
        f"BatchBALD on N={n}, K={k}, C=10 ({platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, JAX {jax.default_backend()}); the first case's median of {repeats} runs:"
    )
    print("| case | N | b | M | jal float64 s | batchbald_redux float64 s | speedup | same indices | jal float32 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s = r["median_seconds"]
        same = "yes" if r["same_indices_float64"] else f"no (overlap {r['overlap_float64']:.0%})"
        f32 = f"{s['jal float32']:.2f} ({r['speedup_float32']:.1f}x)" if "jal float32" in s else "-"
        print(
            f"| {r['case']} | {r['pool_size']} | {r['batch_size']} | {r['num_samples']} | {s['jal float64']:.2f} "
            f"| {s['batchbald_redux float64']:.2f} | {r['speedup_float64']:.1f}x | {same} | {f32} |"
        )
    print(f"| jal only | {n} | 100 | 10000 | - | - | - | - | {again:.2f} (first call {first:.2f}) |")

    record = {
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend()},
        "versions": {**versions(), "torch": torch.__version__, "batchbald_redux": _redux_version()},
        "pool": {"n": n, "k": k, "c": 10},
        "command": "bin/bench-batchbald" + (" --quick" if args.quick else ""),
        "results": [*results, large],
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


def _redux_version() -> str:
    from importlib.metadata import version

    return version("batchbald_redux")


if __name__ == "__main__":
    main()
