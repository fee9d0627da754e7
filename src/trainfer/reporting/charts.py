"""The report's charts, drawn with matplotlib to inline SVG (the page needs no external resource)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

TRAIN, INFER = "#d9480f", "#1971c2"


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def training_curves(history: list[dict[str, Any]], best_epoch: int, metric: str) -> str:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], label="train loss", color=TRAIN)
    a.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color=INFER)
    b.plot(epochs, [h[f"val_{metric}"] for h in history], label=f"validation {metric}", color=INFER)
    if f"train_{metric}" in history[0]:
        b.plot(epochs, [h[f"train_{metric}"] for h in history], label=f"train {metric} (running)", color=TRAIN)
    for ax in (a, b):
        ax.axvline(best_epoch, ls="--", color="gray", label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    a.set_title("loss per epoch")
    b.set_title(f"{metric} per epoch (early stopping keeps the dashed epoch)")
    return _svg(fig)


def latency_by_variant(rows: list[dict[str, Any]]) -> str:
    """p50 and p90 at batch 1 per variant (bars), torch eager included when measured."""
    rows = [r for r in rows if r.get("latency_ms_p50") is not None]
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r.get("latency_ms_p90") or 0 for r in rows], height=0.4, color="#a5d8ff",
            label="p90")
    ax.barh([i - 0.2 for i in y], [r["latency_ms_p50"] for r in rows], height=0.4, color=INFER, label="p50")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per prediction at batch 1 (ms, log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def accuracy_vs_latency(rows: list[dict[str, Any]], metric: str) -> str:
    rows = [r for r in rows if r.get("latency_ms_p50") is not None and r.get(f"test_{metric}") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        color = "#2f9e44" if r.get("chosen") else ("#868e96" if r.get("status") != "kept" else INFER)
        ax.scatter(r["latency_ms_p50"], r[f"test_{metric}"], color=color, s=40 if r.get("chosen") else 20)
        ax.annotate(r["name"], (r["latency_ms_p50"], r[f"test_{metric}"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title("variants: green is the chosen one, grey over budget")
    ax.grid(alpha=0.3)
    return _svg(fig)


def phases_side_by_side(flops: tuple[float, float], energy: tuple[float | None, float | None],
                        energy_label: str) -> str:
    """FLOPs and energy per sample: one training sample against one prediction."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.bar(["training\n(fwd+bwd)", "inference\n(fwd)"], flops, color=[TRAIN, INFER])
    a.set_title("FLOPs per sample")
    a.set_yscale("log")
    vals = [v or 0 for v in energy]
    b.bar(["training", "inference"], vals, color=[TRAIN, INFER])
    b.set_title(f"energy per sample (J, {energy_label})")
    if all(v > 0 for v in vals):
        b.set_yscale("log")
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y")
    return _svg(fig)
