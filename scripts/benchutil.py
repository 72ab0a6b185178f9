"""Timing helper shared by the benchmark scripts: medians, never means, after warm-up."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return median_times([fn], repeats)[0]


def median_times(fns, repeats: int) -> list[float]:
    """Median wall time of each of ``fns`` over ``repeats`` rounds, the calls interleaved round by round, so that
    a machine that slows down or speeds up during the run affects each alike (whole processes on a shared
    2-core machine vary by +-0.5 s from run to run)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
