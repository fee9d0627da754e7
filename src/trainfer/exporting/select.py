"""Choosing a variant: the fastest one within the accuracy budget, and only when the win is real.

Pure functions over the measured table, so the rules are easy to test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer._timing import median_ratio_ci

BASELINE = "onnx-fp32"


def quality_drop(ref: float, value: float, task: str) -> float:
    """Accuracy drop in percentage points (classification), or % rmse increase (regression)."""
    if task == "classification":
        return (ref - value) * 100.0
    return (value - ref) / ref * 100.0 if ref > 0 else 0.0


def drop_upper_bound(ref_correct: np.ndarray, var_correct: np.ndarray, z: float = 1.645) -> float:
    """One-sided 95% upper bound of the accuracy drop in points, from paired per-sample correctness.

    On a small validation split one sample is worth several tenths of a point, so the observed drop
    alone lets noise through the budget. b = samples only the reference gets right, c = only the
    variant; the drop is (b - c) / n and its paired standard error sqrt(b + c) / n (McNemar). A variant
    that changes no prediction has a bound of 0.
    """
    n = len(ref_correct)
    if n == 0:
        return 0.0
    b = int(np.sum(ref_correct & ~var_correct))
    c = int(np.sum(~ref_correct & var_correct))
    return 100.0 * ((b - c) + z * np.sqrt(b + c)) / n


def _drop(row: dict[str, Any]) -> float:
    """What the budget is checked against: the upper bound when there is one, else the observed drop."""
    return row.get("val_drop_bound", row["val_drop"])


def qualifies(row: dict[str, Any], max_drop: float) -> bool:
    return _drop(row) <= max_drop + 1e-9


def choose(rows: list[dict[str, Any]], samples: dict[str, np.ndarray], max_drop: float) -> tuple[str, str]:
    """(chosen variant, why). ``rows`` carry name, status ("ok"/"failed"/"skipped"), val_drop and
    optionally val_drop_bound (see drop_upper_bound), which the budget is then checked against;
    ``samples`` are per-call latencies at the deployment batch size, measured interleaved.

    A variant qualifies when it was built and measured and its validation drop (its upper bound,
    when given) is within ``max_drop``. The fastest qualifying one (lowest median) wins only if the bootstrap 95%
    interval of its latency ratio against onnx-fp32 lies wholly below 1: a difference the noise
    could explain does not replace the lossless baseline.
    """
    qualifying = [r["name"] for r in rows
                  if r["status"] == "ok" and qualifies(r, max_drop) and r["name"] in samples]
    if not qualifying or BASELINE not in samples:
        return BASELINE, "no variant qualifies; keeping the lossless baseline"
    best = min(qualifying, key=lambda n: float(np.median(samples[n])))
    if best == BASELINE:
        if len(qualifying) == 1:
            return BASELINE, "no other variant qualifies; keeping the lossless baseline"
        return BASELINE, "onnx-fp32 is the fastest variant within the budget"
    ratio, lo, hi = median_ratio_ci(samples[best], samples[BASELINE])
    if hi < 1.0:
        return best, f"{best} is {1 / ratio:.2f}x faster than onnx-fp32 (95% CI of the ratio {lo:.3f}-{hi:.3f})"
    return BASELINE, f"{best} is not faster than onnx-fp32 beyond noise (ratio {ratio:.3f}, CI {lo:.3f}-{hi:.3f})"
