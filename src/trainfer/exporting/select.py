"""Choosing a variant: the fastest one within the accuracy budget, and only when the win is real.

Pure functions over the measured table, so the rules are easy to test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer._timing import BLOCK, MIN_ROUNDS, median_ratio_ci

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
    variant; the drop is (b - c) / n. The plain paired (McNemar) standard error sqrt(b + c) / n is zero
    when the variant changes no validation prediction, and a bound of 0 then claimed that a variant
    agreeing on 50 rows loses nothing anywhere. Agresti & Min's adjusted interval (half a sample added
    to each cell of the paired table) keeps the uncertainty the split's size leaves: with no change
    seen, the bound is z / (n + 2), so a budget finer than that needs a larger validation split.
    """
    n = len(ref_correct)
    if n == 0:
        return float("inf")  # nothing to judge by: no budget is met
    b = int(np.sum(ref_correct & ~var_correct)) + 0.5
    c = int(np.sum(~ref_correct & var_correct)) + 0.5
    m = n + 2
    diff = (b - c) / m
    var = max((b + c) / m - diff**2, 0.0) / m
    return 100.0 * (diff + z * float(np.sqrt(var)))


def smallest_bound(n: int, z: float = 1.645) -> float:
    """The bound drop_upper_bound gives a variant that changes no prediction on ``n`` validation rows."""
    return 100.0 * z / (n + 2) if n > 0 else float("inf")


def _drop(row: dict[str, Any]) -> float:
    """What the budget is checked against: the upper bound when there is one, else the observed drop."""
    return row.get("val_drop_bound", row["val_drop"])


def qualifies(row: dict[str, Any], max_drop: float) -> bool:
    return _drop(row) <= max_drop + 1e-9


def choose(rows: list[dict[str, Any]], samples: dict[str, np.ndarray], max_drop: float,
           block: int = BLOCK) -> tuple[str, str]:
    """(chosen variant, why). ``rows`` carry name, status ("ok"/"failed"/"skipped"), val_drop and
    optionally val_drop_bound (see drop_upper_bound), which the budget is then checked against, and
    val_rows; ``samples`` are per-call latencies at the deployment batch size from time_interleaved
    (rounds of ``block`` calls each).

    A variant qualifies when it was built and measured and its validation drop (its upper bound,
    when given) is within ``max_drop``. The fastest qualifying one (lowest median) wins only if the
    95% interval of its latency ratio against onnx-fp32 (see median_ratio_ci) lies wholly below 1: a
    difference the noise could explain, or an interval the measurement cannot support (too few
    rounds, zero width), does not replace the lossless baseline.
    """
    qualifying = [r["name"] for r in rows
                  if r["status"] == "ok" and qualifies(r, max_drop) and r["name"] in samples]
    if not qualifying or BASELINE not in samples:
        return BASELINE, "no variant qualifies; keeping the lossless baseline" + _bound_note(rows, max_drop)
    best = min(qualifying, key=lambda n: float(np.median(samples[n])))
    if best == BASELINE:
        if len(qualifying) == 1:
            return BASELINE, "no other variant qualifies; keeping the lossless baseline" + _bound_note(rows, max_drop)
        return BASELINE, "onnx-fp32 is the fastest variant within the budget"
    ratio, lo, hi, rounds = median_ratio_ci(samples[best], samples[BASELINE], block)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return BASELINE, (f"{best} is not faster than onnx-fp32 beyond noise: {rounds} interleaved rounds of timing "
                          f"cannot tell (ratio {ratio:.3f}; at least {MIN_ROUNDS} needed, measure longer)")
    if hi <= lo:
        return BASELINE, (f"{best} is not faster than onnx-fp32 beyond noise: its latency interval has zero width "
                          f"({lo:.3f}-{hi:.3f}), so the timer did not resolve the calls")
    if hi < 1.0:
        return best, (f"{best} is {1 / ratio:.2f}x faster than onnx-fp32 (95% CI of the ratio {lo:.3f}-{hi:.3f}, "
                      f"{rounds} rounds)")
    return BASELINE, f"{best} is not faster than onnx-fp32 beyond noise (ratio {ratio:.3f}, CI {lo:.3f}-{hi:.3f})"


def _bound_note(rows: list[dict[str, Any]], max_drop: float) -> str:
    """Why variants that look within the budget were refused: the validation split is too small to show it."""
    held = [r for r in rows if r["status"] == "ok" and r["name"] != BASELINE and "val_drop_bound" in r
            and r["val_drop"] <= max_drop + 1e-9 and not qualifies(r, max_drop)]
    if not held:
        return ""
    n = max((r.get("val_rows") or 0) for r in held)
    floor = f" (at least {smallest_bound(n):.2f} on {n} rows)" if n else ""
    names = ", ".join(r["name"] for r in held)
    return (f"; {names} stayed within {max_drop} on the validation split, but its 95% upper bound{floor} does not: "
            f"a larger validation split, or a larger budget, can show it")
