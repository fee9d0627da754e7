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


def time_interleaved(fns: dict[str, Callable[[], Any]], min_count: int = 100, min_seconds: float = 2.0,
                     warmup: int = 10, block: int = 20, max_seconds: float | None = None) -> dict[str, np.ndarray]:
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


def median_ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 400, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians a/b with a bootstrap 95% interval: tells a real difference from noise."""
    rng = np.random.default_rng(seed)
    point = float(np.median(a) / np.median(b))
    ra = rng.choice(a, size=(n_boot, len(a)))
    rb = rng.choice(b, size=(n_boot, len(b)))
    boots = np.median(ra, axis=1) / np.median(rb, axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)
