"""The training half of the ledger: throughput, time-to-target, FLOPs and energy, from the run itself."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainfer.models.flops import forward_flops, training_flops
from trainfer.training import Run


def history(run: Run) -> list[dict[str, Any]]:
    """metrics.jsonl: one line per epoch (per round for a federated run)."""
    return [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def throughput(run: Run) -> dict[str, Any]:
    """samples/s and step time over the epochs left after discarding the first 25% (warm-up)."""
    hist = history(run)
    keep = hist[int(len(hist) * 0.25):] or hist
    sps = float(np.median([h["samples_per_s"] for h in keep]))
    batch = min(run.recipe.train.batch_size, run.summary["samples"]["train"])
    return {"samples_per_s": sps, "step_ms": batch / sps * 1e3, "batch_size": batch,
            "epochs_measured": len(keep), "epochs_discarded": len(hist) - len(keep)}


def time_to_target(run: Run, target: float) -> dict[str, Any]:
    """Wall clock from the first data touch to the first epoch whose validation metric reaches ``target``
    (evaluation included), read from this run's own metrics."""
    hist = history(run)
    metric = "val_accuracy" if run.task == "classification" else "val_rmse"
    reached = (lambda v: v >= target) if run.task == "classification" else (lambda v: v <= target)
    elapsed = run.summary["timings"]["data_s"]
    for h in hist:
        elapsed += h["epoch_s"]
        if reached(h[metric]):
            return {"target": target, "metric": metric, "epoch": h["epoch"], "seconds": elapsed, "reached": True}
    return {"target": target, "metric": metric, "epoch": None, "seconds": None, "reached": False}


def time_to_target_seeds(run: Run, target: float, seeds: int) -> dict[str, Any]:
    """Retrain with ``seeds`` seeds; the olympic mean drops the fastest and slowest (when >= 3)."""
    from trainfer.training import train

    runs = [time_to_target(run, target)]
    with tempfile.TemporaryDirectory(prefix="trainfer-ttt-") as tmp:
        for s in range(1, seeds):
            other = train(run.recipe, out=Path(tmp) / f"seed{s}", seed=run.recipe.seed + s, quiet=True)
            runs.append(time_to_target(other, target))
    times = sorted(r["seconds"] for r in runs if r["reached"])
    trimmed = times[1:-1] if len(times) >= 3 else times
    return {"target": target, "metric": runs[0]["metric"], "seeds": seeds, "reached": len(times),
            "seconds_per_seed": [r["seconds"] for r in runs],
            "olympic_mean_s": float(np.mean(trimmed)) if trimmed else None}


def flops(run: Run) -> dict[str, Any]:
    shape = run.features.input_shape
    fwd = forward_flops(run.model, shape)
    train = training_flops(run.model, shape)
    return {"forward_per_sample": fwd, "train_per_sample": train,
            "train_to_inference_ratio": train / fwd if fwd else math.nan,
            "counter": "torch.utils.flop_counter.FlopCounterMode (matmul/conv only)"}
