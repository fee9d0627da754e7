"""A tuning study's charts, from summary.json alone (no Optuna, no database), as inline SVG.

Each marker set carries a ``gid``, so it is one ``<g id=...>`` in the SVG holding one ``<use>`` per
point: the page can be checked point by point, and the ids say what each set is.
"""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from trainfer.reporting.charts import INFER, TRAIN, _svg, plt
from trainfer.reporting.fmt import si

PRUNED, FAILED, FRONT, BEST, OTHER = "#f08c00", "#e03131", "#2f9e44", "#7048e8", "#adb5bd"
COST_LABELS = {"flops": "forward FLOPs per prediction", "latency": "ONNX p50 latency at batch 1 (ms)"}


def last_intermediate(trial: dict[str, Any]) -> float | None:
    """The last value a trial reported to the pruner (JSON keeps the epochs as strings)."""
    steps = trial.get("intermediate") or {}
    return steps[max(steps, key=int)] if steps else None


def best_so_far(trials: list[dict[str, Any]], maximize: bool) -> list[tuple[int, float]]:
    """(trial number, best first-objective value among the complete trials up to it), one per complete trial."""
    out: list[tuple[int, float]] = []
    for t in sorted((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["number"]):
        v = t["values"][0]
        best = v if not out else (max if maximize else min)(out[-1][1], v)
        out.append((t["number"], best))
    return out


def history(summary: dict[str, Any]) -> str:
    """Each complete trial's objective over trial number, the best so far, pruned trials at their last
    reported value (triangles), failed trials along the bottom (crosses: they have no value)."""
    trials, metric = summary["trials"], summary["metric"]
    maximize = summary["directions"][0] == "maximize"
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    best = best_so_far(trials, maximize)
    if best:  # the line runs on to the last trial: the best so far holds while later trials do worse
        xs = [n for n, _ in best] + [max(t["number"] for t in trials)]
        ax.plot(xs, [v for _, v in best] + [best[-1][1]], drawstyle="steps-post", color=TRAIN, lw=1.5,
                label="best so far", gid="study-history-best")
    ax.scatter([t["number"] for t in done], [t["values"][0] for t in done], color=INFER, s=22, zorder=3,
               label=f"complete ({len(done)})", gid="study-history-complete")
    if pruned:
        # A trial pruned before reporting anything (not expected) has no value: it sits on the bottom edge.
        known = [(t["number"], last_intermediate(t)) for t in pruned]
        lo = min([v for _, v in known if v is not None] + [t["values"][0] for t in done], default=0.0)
        ax.scatter([n for n, _ in known], [lo if v is None else v for _, v in known], marker="v", color=PRUNED,
                   s=30, zorder=3, label=f"pruned ({len(pruned)}), at its last reported epoch",
                   gid="study-history-pruned")
    if failed:
        # A band below every value, so a cross never reads as a (low) value of its own.
        values = [t["values"][0] for t in done] + [v for t in pruned if (v := last_intermediate(t)) is not None]
        if values:
            lo, hi = min(values), max(values)
            span = (hi - lo) or max(abs(hi), 1.0) * 0.1
            ax.set_ylim(lo - 0.2 * span, hi + 0.08 * span)
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter([t["number"] for t in failed], [0.05] * len(failed), transform=bottom, marker="x",
                   color=FAILED, s=30, zorder=3, label=f"failed ({len(failed)}), no value",
                   gid="study-history-failed")
    numbers = [t["number"] for t in trials]
    ax.set_xlim(min(numbers, default=0) - 0.5, max(numbers, default=0) + 0.5)  # failed marks are not data
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    which = " (first objective)" if len(summary["objectives"]) > 1 else ""
    ax.set_ylabel(f"validation {metric}{which}")
    ax.set_title(f"{len(trials)} trials; the line is the best {metric} so far "
                 f"({'higher' if maximize else 'lower'} is better)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _svg(fig)


def importances(values: dict[str, float], method: str, metric: str) -> str:
    """Horizontal bars, the most important parameter on top, each with its share in percent."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(items) + 1.2))
    bars = ax.barh(range(len(items)), [v for _, v in items], color=INFER)
    for i, bar in enumerate(bars):  # one id per bar (a gid given to barh would repeat on every bar)
        bar.set_gid(f"study-importance-bar-{i}")
    for i, (_, v) in enumerate(items):
        ax.annotate(f"{100 * v:.1f}%", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=9)
    ax.set_xlim(0, max([v for _, v in items] + [0.0]) * 1.15 or 1.0)
    ax.set_xlabel(f"share of the variance of validation {metric} ({method})")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def pareto(summary: dict[str, Any]) -> str:
    """Accuracy (first objective) against the cost (second): every complete trial, the front highlighted and
    joined as a staircase (the edge of what it dominates), the trial best.yaml holds starred."""
    metric, cost = summary["metric"], summary["objectives"][1]
    maximize = summary["directions"][0] == "maximize"
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    front = sorted(summary["pareto"], key=lambda t: (t["values"][1], -t["values"][0] if maximize else t["values"][0]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([t["values"][1] for t in done], [t["values"][0] for t in done], color=OTHER, s=18, zorder=2,
               label=f"complete trials ({len(done)})", gid="study-pareto-trials")
    ax.plot([t["values"][1] for t in front], [t["values"][0] for t in front], drawstyle="steps-post", color=FRONT,
            lw=1.2, zorder=3, gid="study-pareto-line")
    ax.scatter([t["values"][1] for t in front], [t["values"][0] for t in front], color=FRONT, s=40, zorder=4,
               label=f"Pareto front ({len(front)})", gid="study-pareto-front")
    points: dict[tuple[float, float], list[str]] = {}  # trials with the same values share one label
    for t in front:
        points.setdefault((t["values"][1], t["values"][0]), []).append(str(t["number"]))
    for (x, y), numbers in points.items():
        ax.annotate("trial " + ", ".join(numbers), (x, y), xytext=(4, -11), textcoords="offset points", fontsize=7)
    b = summary["best"]
    ax.scatter([b["values"][1]], [b["values"][0]], marker="*", color=BEST, s=180, zorder=5,
               label=f"best.yaml (trial {b['number']}, {summary.get('pick') or 'most-accurate'})",
               gid="study-pareto-best")
    costs = [t["values"][1] for t in done if t["values"][1] > 0]
    if costs and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))  # the labels carry units: fewer of them, or they overlap
    unit = "FLOP" if cost == "flops" else ""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: si(v, unit)))
    ax.set_xlabel(COST_LABELS.get(cost, cost) + " (lower is better)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"validation {metric} against inference cost")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _svg(fig)
