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


MIN_REGRESSION_ROWS = 10  # fewer validation rows give no usable interval of an rmse ratio


def rmse_increase_upper_bound(ref_err: np.ndarray, var_err: np.ndarray, n_boot: int = 2000,
                              seed: int = 0) -> float:
    """One-sided 95% upper bound of the % rmse increase of a variant over the reference, from their
    per-row errors on the same validation rows (paired bootstrap over rows). On a small split the
    observed increase alone lets noise through the budget, as the accuracy drop did; with fewer than
    MIN_REGRESSION_ROWS rows there is no bound to trust (inf: no budget is met)."""
    ref_sq = np.square(np.asarray(ref_err, dtype=np.float64).reshape(-1))
    var_sq = np.square(np.asarray(var_err, dtype=np.float64).reshape(-1))
    n = len(ref_sq)
    if n < MIN_REGRESSION_ROWS:
        return float("inf")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ref_rmse, var_rmse = np.sqrt(ref_sq[idx].mean(axis=1)), np.sqrt(var_sq[idx].mean(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        # a resample where the reference is exact: any error of the variant is an unbounded increase
        pct = np.where(ref_rmse > 0, (var_rmse / ref_rmse - 1.0) * 100.0,
                       np.where(var_rmse > 0, np.inf, 0.0))
    return float(np.percentile(pct, 95))


def _drop(row: dict[str, Any]) -> float:
    """What the budget is checked against: the upper bound when there is one, else the observed drop. A bound
    recorded as None is one the split could not give (too few rows): no budget is met."""
    if "val_drop_bound" in row:
        return float("inf") if row["val_drop_bound"] is None else row["val_drop_bound"]
    return row["val_drop"]


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
    bounds = ", ".join(f"{r['name']} " + ("none" if r["val_drop_bound"] is None else f"{r['val_drop_bound']:+.2f}")
                       for r in held)
    rows_seen = f" on {held[0]['val_rows']} rows" if held[0].get("val_rows") else ""
    return (f"; within {max_drop} on the validation split, but not its 95% upper bound{rows_seen} ({bounds}): "
            f"a larger validation split, or a larger budget, can show it")
