"""infographic.png: one 1600x900 picture of the two phases, with this run's measured numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainfer.reporting.charts import INFER, TRAIN
from trainfer.reporting.fmt import duration_ms, get, seconds, si

WIDTH, HEIGHT, DPI = 1600, 900, 100


def draw(bench: dict[str, Any], title: str, path: Path) -> None:
    v = f"inference.variants.{bench['inference']['bundle_key']}"
    t = bench["training"]
    fed = t.get("federated")
    left = [
        ("compute", f"{si(t['flops_per_sample'], 'FLOP')} / sample (fwd+bwd)"),
        ("time", f"{seconds(t['wall_s'])} wall, {si(t['samples_per_s'], '/s')} samples"),
        ("data", f"{t['labelled_samples']:,} labelled samples"),
        ("output", f"{t['params']:,} parameters"),
        ("energy", f"{si(get(bench, 'energy.training_j.value'), 'J')} "
                   f"({get(bench, 'energy.training_j.method')})"),
        ("memory", f"{(t.get('peak_rss_mb') or 0):.0f} MB peak"),
    ]
    if fed:  # no one training machine: rounds and bytes, and no figures it did not measure
        left[1] = ("time", f"{seconds(t['wall_s'])} wall, {fed['clients']} clients x {fed['rounds']} rounds")
        left[2] = ("data", f"{t['labelled_samples']:,} labelled, {fed['bytes_total'] / 1e6:.2f} MB exchanged")
        left[4] = ("energy", "not measured (federated)")
        left[5] = ("memory", "not measured (federated)")
    right = [
        ("compute", f"{si(bench['inference']['flops_per_sample'], 'FLOP')} / prediction (fwd)"),
        ("latency", f"p50 {duration_ms(get(bench, v + '.latency_ms_p50'))}, "
                    f"p90 {duration_ms(get(bench, v + '.latency_ms_p90'))}"),
        ("data", "one unlabelled input"),
        ("output", "a prediction + probabilities"),
        ("energy", f"{si(get(bench, 'energy.inference_j_per_prediction.value'), 'J')} / prediction "
                   f"({get(bench, 'energy.inference_j_per_prediction.method')})"),
        ("memory", f"{(get(bench, 'inference.cold_start.bundle.peak_rss_mb') or 0):.0f} MB peak, no torch"),
    ]
    fig = plt.figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    fig.text(0.5, 0.93, "Training vs Inference", ha="center", fontsize=34, weight="bold")
    fig.text(0.5, 0.875, title, ha="center", fontsize=15, color="#495057")
    for x, head, color, items in ((0.05, "TRAINING", TRAIN, left), (0.53, "INFERENCE", INFER, right)):
        fig.patches.append(plt.Rectangle((x - 0.02, 0.14), 0.44, 0.68, transform=fig.transFigure,
                                         facecolor=color, alpha=0.08, edgecolor=color, lw=2))
        fig.text(x, 0.76, head, fontsize=26, weight="bold", color=color)
        for i, (label, text) in enumerate(items):
            y = 0.67 - i * 0.085
            fig.text(x, y, label.upper(), fontsize=13, color="#868e96", weight="bold")
            fig.text(x + 0.09, y, text, fontsize=17)
    ratio = t.get("flops_ratio_train_to_inference")
    be = get(bench, "energy.break_even_predictions.value")
    foot = (f"one training sample costs {ratio:.1f}x the FLOPs of one prediction" if ratio else "")
    if be:
        foot += f"  ·  {be:,.0f} predictions use as much energy as the whole training run"
    fig.text(0.5, 0.07, foot, ha="center", fontsize=15)
    fig.text(0.5, 0.03, f"measured by trainfer on {bench['env']['cpu_model']} · energy marked 'estimated' "
                        "is CPU time x a stated watts per core", ha="center", fontsize=10, color="#868e96")
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
