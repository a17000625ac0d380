"""Median wall times of several jitted calls, run in turn so that all see the same machine load."""

from __future__ import annotations

import statistics
import time

import jax


def interleaved_medians(calls: dict, reps: int) -> dict[str, float]:
    """{name: (fn, *args)} -> {name: median seconds of fn(*args) over `reps` rounds}, after one compiling call each."""
    for fn, *args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, (fn, *args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}
