"""DP-SGD cost: time per epoch of trainfer's loop with a privacy: section against the same loop without one.

Both sides train the same model (MLP without BatchNorm, so no GroupNorm conversion changes the architecture)
on the same data, batch size, optimizer and thread count through `trainfer.train`. The DP side gives the noise
multiplier (no ε search, a one-off cost reported separately by a run with a target ε) and pays for Opacus's
per-sample gradients, clipping, noise, Poisson sampling and the per-epoch ε accounting. Rounds are
interleaved in one process (A B, B A, ...; MEASURE.md). Per epoch, from metrics.jsonl: `train_s` (the steps)
and `epoch_s` (steps + validation + ε accounting); the first epoch of each run is dropped (warm-up).

    .venv/bin/python benchmarks/dp_overhead.py            # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/dp_overhead.py --quick    # smoke run

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import environment

import trainfer


def recipe(epochs: int, batch: int, threads: int, dp: bool, hidden: list[int]) -> dict[str, Any]:
    return {"data": {"source": "digits"}, "model": {"name": "mlp", "hidden": hidden, "batchnorm": False},
            "train": {"epochs": epochs, "batch_size": batch, "patience": None, "device": "cpu", "threads": threads},
            **({"privacy": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}} if dp else {})}


def one_run(rec: dict[str, Any]) -> dict[str, float]:
    """Median seconds per epoch (steps; whole epoch) over the epochs after the first, and samples/s."""
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        run = trainfer.train(rec, out=Path(tmp) / "run", quiet=True)
        records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()][1:]
    return {"train_s": statistics.median(r["train_s"] for r in records),
            "epoch_s": statistics.median(r["epoch_s"] for r in records),
            "samples_per_s": statistics.median(r["samples_per_s"] for r in records),
            # CPU seconds (user + sys) of all epochs: other jobs stretch wall time far more than CPU time
            "cpu_s_per_epoch": run.summary["timings"]["train_cpu_s"] / run.summary["epochs_run"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="interleaved A/B rounds (default 5, quick 2)")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and rounds, for smoke runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default 1)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    epochs, batch, hidden = (3, 64, [128]) if args.quick else (5, 64, [256, 128])
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"dp_overhead: digits, mlp {hidden} (no BatchNorm), batch {batch}, {epochs} epochs, {args.threads} threads,"
          f" {rounds} rounds")
    sides = {side: recipe(epochs, batch, args.threads, side == "dp", hidden) for side in ("plain", "dp")}
    for side in sides.values():  # warm-up, unmeasured: imports (opacus, scipy) and first-call costs
        one_run({**side, "train": {**side["train"], "epochs": 2}})

    raw = []
    for r in range(rounds):
        order = ("plain", "dp") if r % 2 == 0 else ("dp", "plain")
        res = {side: one_run(sides[side]) for side in order}
        row = {f"{side}_{k}": v for side in ("plain", "dp") for k, v in res[side].items()}
        row.update(step_ratio=res["dp"]["train_s"] / res["plain"]["train_s"],
                   epoch_ratio=res["dp"]["epoch_s"] / res["plain"]["epoch_s"],
                   cpu_ratio=res["dp"]["cpu_s_per_epoch"] / res["plain"]["cpu_s_per_epoch"])
        raw.append(row)
        print(f"  round {r + 1}: plain {res['plain']['train_s']:.3f} s steps / {res['plain']['epoch_s']:.3f} s epoch"
              f" | dp {res['dp']['train_s']:.3f} s / {res['dp']['epoch_s']:.3f} s"
              f" | ratio steps {row['step_ratio']:.2f}x, epoch {row['epoch_ratio']:.2f}x, cpu {row['cpu_ratio']:.2f}x")

    # A run with a target ε: the noise search is a one-off cost before the first epoch.
    t0 = time.perf_counter()
    target = {**sides["dp"], "privacy": {"epsilon": 8.0}, "train": {**sides["dp"]["train"], "epochs": 1}}
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        run = trainfer.train(target, out=Path(tmp) / "run", quiet=True)
    search_s = time.perf_counter() - t0 - run.summary["timings"]["train_loop_s"]

    step_ratio = statistics.median(x["step_ratio"] for x in raw)
    epoch_ratio = statistics.median(x["epoch_ratio"] for x in raw)
    cpu_ratio = statistics.median(x["cpu_ratio"] for x in raw)
    ratios = [x["step_ratio"] for x in raw]
    cv = statistics.pstdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else 0.0
    print(f"DP-SGD costs {step_ratio:.2f}x the plain time per epoch on the steps, {epoch_ratio:.2f}x per whole epoch"
          f" (validation and ε accounting included); ε search + setup for a target ε: {search_s:.1f} s once;"
          f" step-ratio CV {100 * cv:.0f}%; CPU time per epoch {cpu_ratio:.2f}x")
    if cv > 0.1:
        print(f"warning: ratios vary by {100 * cv:.0f}% between rounds (load average {load_start} at start)")
    print(json.dumps({
        "benchmark": "dp_overhead", "step_time_ratio": step_ratio, "epoch_time_ratio": epoch_ratio,
        "cpu_time_ratio": cpu_ratio,
        "step_ratio_cv": cv, "setup_with_epsilon_search_s": search_s, "rounds": rounds, "threads": args.threads,
        "plain_train_s_per_epoch": statistics.median(x["plain_train_s"] for x in raw),
        "dp_train_s_per_epoch": statistics.median(x["dp_train_s"] for x in raw),
        "config": {"quick": args.quick, "dataset": "digits", "model": "mlp", "hidden": hidden, "batchnorm": False,
                   "batch_size": batch, "epochs": epochs, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                   "accountant": "prv"},
        "env": {**environment(args.threads), "load_avg_1m_start": load_start}, "raw": raw,
    }))


if __name__ == "__main__":
    main()
