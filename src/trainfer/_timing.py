"""Latency measurement by the rules in MEASURE.md: warm up, interleave, keep every sample.

The one harness for optimize, bench and the scripts in benchmarks/. Several callables are timed in one
process run, in rounds of ``block`` calls each (A B C, then B C A, ...: who goes first rotates, so drift
favours none), until each has a minimum count, the interleaved window has lasted a minimum duration and
a minimum number of rounds ran; comparisons between them are then fair on a shared, noisy machine. (The
duration applies to the shared window, not to each callable's own time: otherwise a 10 µs variant beside
a 1 ms one would need 100x more rounds than it takes to sample the machine's noise across the window.)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

QUICK = {"min_count": 100, "min_seconds": 2.0}
FULL = {"min_count": 1000, "min_seconds": 10.0}
BLOCK = 20  # calls per callable per interleaved round
MIN_ROUNDS = 10  # fewer interleaved rounds than this cannot show a latency difference beyond the machine's drift
P90_MIN_SAMPLES = 64  # MEASURE.md: no p90 from fewer samples
P99_MIN_SAMPLES = 662  # ... and no p99 from fewer


@dataclass
class Interleaved:
    """What interleave measured: per-call seconds for each callable in measurement order (round r is
    calls [r*block, (r+1)*block)), how many rounds ran and how long the interleaved window lasted."""

    samples: dict[str, np.ndarray]
    rounds: int
    window_s: float
    block: int


def interleave(fns: dict[str, Callable[[], Any]], min_count: int = 100, min_seconds: float = 2.0,
               warmup: int = 10, block: int = BLOCK, min_rounds: int = 1,
               max_seconds: float | None = None) -> Interleaved:
    """Time ``fns`` in interleaved rounds (see the module docstring); ``warmup`` untimed calls each first.
    ``max_seconds`` stops a long window once the counts and rounds are met, whatever ``min_seconds`` says."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock, rounds = time.perf_counter_ns, 0
    gc.collect()  # a collection owed by the set-up would land in someone's timed calls
    start = time.perf_counter()
    while True:
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            fn, out = fns[name], samples[name]
            for _ in range(block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
        rounds += 1
        window = time.perf_counter() - start
        enough = rounds >= min_rounds and all(len(s) >= min_count for s in samples.values())
        if enough and (window >= min_seconds or (max_seconds is not None and window > max_seconds)):
            break
    return Interleaved({name: np.asarray(s, dtype=np.float64) / 1e9 for name, s in samples.items()},
                       rounds, window, block)


def time_interleaved(fns: dict[str, Callable[[], Any]], min_count: int = 100, min_seconds: float = 2.0,
                     warmup: int = 10, block: int = BLOCK, max_seconds: float | None = None,
                     min_rounds: int = 1) -> dict[str, np.ndarray]:
    """Per-call wall times in seconds for each callable: ``interleave(...).samples``."""
    return interleave(fns, min_count, min_seconds, warmup, block, min_rounds=min_rounds,
                      max_seconds=max_seconds).samples


def summarize(seconds: np.ndarray | list[float]) -> dict[str, Any]:
    """p50/p90/p99 in ms (p90 needs >= 64 samples, p99 >= 662, else None), mean, min, CV and count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    n = len(ms)
    mean = float(ms.mean()) if n else float("nan")
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)) if n else None,
        "latency_ms_p90": float(np.percentile(ms, 90)) if n >= P90_MIN_SAMPLES else None,
        "latency_ms_p99": float(np.percentile(ms, 99)) if n >= P99_MIN_SAMPLES else None,
        "latency_ms_mean": mean,
        "latency_ms_min": float(ms.min()) if n else None,
        "cv": float(ms.std() / mean) if n and mean > 0 else None,
        "samples": n,
    }


def per_round_ratios(a: np.ndarray, b: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """For each interleaved round, a's median over b's median: the two blocks ran back to back."""
    rounds = min(len(a), len(b)) // block
    return (np.median(np.asarray(a[:rounds * block]).reshape(rounds, block), axis=1)
            / np.median(np.asarray(b[:rounds * block]).reshape(rounds, block), axis=1))


def paired_ratio(a: np.ndarray, b: np.ndarray, block: int = BLOCK) -> float:
    """How much slower ``a`` is than ``b``: the median over rounds of the per-round ratio."""
    return float(np.median(per_round_ratios(a, b, block)))


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
    per_round = per_round_ratios(a, b, block)
    rounds = len(per_round)
    if rounds == 0:
        return float("nan"), float("nan"), float("nan"), 0
    point = float(np.median(per_round))
    if rounds < MIN_ROUNDS:
        return point, float("nan"), float("nan"), rounds
    rng = np.random.default_rng(seed)
    boots = np.median(per_round[rng.integers(0, rounds, size=(n_boot, rounds))], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi), rounds
