"""The audit's statistics, as pure functions on two arrays of attack scores (higher = "member").

AUC, TPR at a fixed false-positive rate, a paired stratified bootstrap for their intervals, Clopper-Pearson
bounds on a proportion, and the empirical ε lower bound that a (TPR, FPR) pair implies. numpy and scipy
(a dependency of scikit-learn, in the train extra) only: easy to test against brute force.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting one half (Mann-Whitney U / n_m n_n)."""
    m, n = len(members), len(non_members)
    both = np.concatenate([members, non_members])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value, so ties share their ranks
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse[:m]].sum())
    return (rank_sum - m * (m + 1) / 2.0) / (m * n)


def min_non_members(fpr: float) -> int:
    """Fewest non-members for which a false-positive rate of ``fpr`` is a measurement: one false positive
    must be allowed (below that, "TPR at 0.1% FPR" is TPR at 0 false positives, whatever its label says)."""
    return math.ceil(round(1.0 / fpr, 9))


def threshold_at(non_members: np.ndarray, fpr: float) -> float:
    """The score above which at most ``floor(fpr * n)`` non-members lie: "member" means score > threshold."""
    allowed = math.floor(round(fpr * len(non_members), 9))
    ordered = np.sort(non_members)[::-1]
    return float(ordered[min(allowed, len(ordered) - 1)])


def tpr_at(members: np.ndarray, non_members: np.ndarray, fpr: float) -> dict[str, Any]:
    """TPR at the threshold that keeps the false positives within ``fpr``, with the counts behind it."""
    t = threshold_at(non_members, fpr)
    tp, fp = int((members > t).sum()), int((non_members > t).sum())
    return {"tpr": tp / len(members), "fpr": fp / len(non_members), "true_positives": tp, "false_positives": fp,
            "threshold": t}


def bootstrap(scores: dict[str, tuple[np.ndarray, np.ndarray]], fprs: list[float], resamples: int, seed: int,
              confidence: float = 0.95) -> dict[str, dict[str, list[float]]]:
    """Percentile intervals of AUC and TPR at each ``fpr`` for every attack, from one set of resamples.

    Members and non-members are resampled separately (their counts are fixed by the split), and every
    attack sees the same resamples, so their intervals are comparable. Returns
    ``{attack: {"auc": [lo, hi], "tpr@0.01": [lo, hi], ...}}``.
    """
    rng = np.random.default_rng(seed)
    m, n = (len(a) for a in next(iter(scores.values())))
    draws: dict[str, dict[str, list[float]]] = {k: {"auc": [], **{f"tpr@{f:g}": [] for f in fprs}} for k in scores}
    for _ in range(resamples):
        im, in_ = rng.integers(0, m, m), rng.integers(0, n, n)
        for name, (sm, sn) in scores.items():
            bm, bn = sm[im], np.sort(sn[in_])[::-1]
            draws[name]["auc"].append(auc(bm, bn))
            for f in fprs:
                t = bn[min(math.floor(round(f * n, 9)), n - 1)]  # threshold_at, on the already sorted scores
                draws[name][f"tpr@{f:g}"].append(float((bm > t).mean()))
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    return {name: {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in d.items()}
            for name, d in draws.items()}


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided exact bounds on a proportion from ``k`` of ``n``: (lower, upper), each holding with
    probability at least 1 - alpha."""
    from scipy.special import betaincinv

    lower = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha))
    upper = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha))
    return lower, upper


def epsilon_lower_bound(tp: int, n_members: int, fp: int, n_non_members: int, delta: float,
                        alpha: float) -> dict[str, float]:
    """The smallest ε an (ε, δ)-DP training run could have and still let this attack reach (TPR, FPR).

    Any test of membership against an (ε, δ)-DP mechanism obeys TPR <= e^ε FPR + δ and, swapping the roles,
    1 - FPR <= e^ε (1 - TPR) + δ. With TPR bounded from below and FPR from above (Clopper-Pearson, each at
    level ``alpha``), ε >= max(log((TPR_lo - δ) / FPR_hi), log((1 - FPR_hi - δ) / (1 - TPR_lo)), 0).
    """
    tpr_lo, _ = clopper_pearson(tp, n_members, alpha)
    _, fpr_hi = clopper_pearson(fp, n_non_members, alpha)
    eps = 0.0
    if tpr_lo - delta > 0:
        eps = max(eps, math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and tpr_lo < 1:
        eps = max(eps, math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return {"epsilon": eps, "tpr_lower": tpr_lo, "fpr_upper": fpr_hi}
