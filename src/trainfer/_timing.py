"""Latency measurement by the rules in MEASURE.md: warm up, interleave, keep every sample.

Several callables are timed in one process run, interleaved in blocks (A B C A B C ...), until each
has a minimum count and the interleaved window has lasted a minimum duration; comparisons between
them are then fair on a shared, noisy machine. (The duration applies to the shared window, not to
each callable's own time: otherwise a 10 µs variant beside a 1 ms one would need 100x more rounds
than it takes to sample the machine's noise across the window.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

QUICK = {"min_count": 100, "min_seconds": 2.0}
FULL = {"min_count": 1000, "min_seconds": 10.0}
BLOCK = 20  # calls per callable per interleaved round
MIN_ROUNDS = 10  # fewer interleaved rounds than this cannot show a latency difference beyond the machine's drift


def time_interleaved(fns: dict[str, Callable[[], Any]], min_count: int = 100, min_seconds: float = 2.0,
                     warmup: int = 10, block: int = BLOCK, max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Per-call wall times in seconds for each callable, interleaved in blocks of ``block`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in fns}
    start = time.perf_counter()
    clock = time.perf_counter_ns
    while any(len(s) < min_count for s in samples.values()) or time.perf_counter() - start < min_seconds:
        for name, fn in fns.items():
            out = samples[name]
            for _ in range(block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds and \
                all(len(s) >= min_count for s in samples.values()):
            break
    return {name: np.asarray(s, dtype=np.float64) / 1e9 for name, s in samples.items()}


def summarize(seconds: np.ndarray) -> dict[str, Any]:
    """p50/p90/p99 in ms (p90 needs >= 64 samples, p99 >= 662, else None), mean, CV and count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    n = len(ms)
    mean = float(ms.mean()) if n else float("nan")
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)) if n else None,
        "latency_ms_p90": float(np.percentile(ms, 90)) if n >= 64 else None,
        "latency_ms_p99": float(np.percentile(ms, 99)) if n >= 662 else None,
        "latency_ms_mean": mean,
        "cv": float(ms.std() / mean) if n and mean > 0 else None,
        "samples": n,
    }


def median_ratio_ci(a: np.ndarray, b: np.ndarray, block: int = BLOCK, n_boot: int = 1000,
                    seed: int = 0) -> tuple[float, float, float, int]:
    """(ratio, low, high, rounds): how much slower ``a`` is than ``b`` (a/b), with a 95% bootstrap interval.

    ``a`` and ``b`` come from time_interleaved: round r holds calls [r*block, (r+1)*block) of each, measured
    side by side. Consecutive calls share the machine's state (frequency, cache, neighbours), so tens of
    thousands of calls are not that many independent samples: resampled one by one they give an interval
    of zero width ("0.920-0.920") that noise then passes through. The unit here is the round: the ratio of
    the two rounds' medians, paired; the interval resamples rounds. Fewer than MIN_ROUNDS rounds give a
    NaN interval: too few to tell.
    """
    rounds = min(len(a), len(b)) // block
    if rounds == 0:
        return float("nan"), float("nan"), float("nan"), 0
    per_round = (np.median(np.asarray(a[:rounds * block]).reshape(rounds, block), axis=1)
                 / np.median(np.asarray(b[:rounds * block]).reshape(rounds, block), axis=1))
    point = float(np.median(per_round))
    if rounds < MIN_ROUNDS:
        return point, float("nan"), float("nan"), rounds
    rng = np.random.default_rng(seed)
    boots = np.median(per_round[rng.integers(0, rounds, size=(n_boot, rounds))], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi), rounds
