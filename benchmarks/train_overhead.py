"""Training-loop overhead: trainfer.train() against a minimal hand-written PyTorch loop.

Both sides train the same model (trainfer.models.build_model, same seed) on the same preprocessed
arrays with the same batch size, AdamW param groups, lr schedule, grad clipping and thread count.
The baseline also runs a validation pass each epoch (any early-stopping loop needs one) but writes
no checkpoints. Rounds are interleaved in one process (MEASURE.md: compare A/B as a same-run ratio).

    .venv/bin/python benchmarks/train_overhead.py            # full: ~1-2 min on 2 cores
    .venv/bin/python benchmarks/train_overhead.py --quick    # smoke run, ~10 s

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

import numpy as np
import torch
from _common import environment
from torch import nn

import trainfer
from trainfer.config import Recipe, build_recipe
from trainfer.data import Prepared, prepare
from trainfer.models import build_model
from trainfer.training.schedule import lr_at

GOAL_OVERHEAD_PCT = 3.0  # issue 10.31 (was 5)


def make_recipe(n_samples: int, epochs: int, batch: int, threads: int) -> Recipe:
    return build_recipe({
        "data": {"source": "synthetic-classification",
                 "options": {"n_samples": n_samples, "n_features": 64}},
        "model": {"name": "mlp", "hidden": [256, 256]},
        # patience=null: no early stopping, so both sides run exactly `epochs` epochs.
        # device=cpu: the goal is about CPU training. threads: trainfer sets it for its loop; main()
        # sets the same count process-wide, so the baseline runs at exactly the same count.
        "train": {"epochs": epochs, "batch_size": batch, "patience": None, "device": "cpu",
                  "threads": threads},
    })


def run_trainfer(recipe: Recipe, n_train: int) -> tuple[float, float, float, float]:
    """(samples/s over the loop wall time incl. eval + checkpoints, loop seconds, train-phase seconds,
    CPU seconds of the epochs: the process's user + sys time, as trainfer's summary records it)."""
    with tempfile.TemporaryDirectory(prefix="bench-trainfer-") as tmp:
        run = trainfer.train(recipe, out=Path(tmp) / "run", quiet=True)
        records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    loop_s = float(run.summary["timings"]["train_loop_s"])
    epochs = int(run.summary["epochs_run"])
    return n_train * epochs / loop_s, loop_s, sum(r["train_s"] for r in records), float(
        run.summary["timings"]["train_cpu_s"])


def run_baseline(recipe: Recipe, data: Prepared) -> tuple[float, float, float, float]:
    """What a competent engineer writes by hand: per-step lr, fwd, loss, bwd, clip, step; val per epoch."""
    cfg = recipe.train
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.features.input_shape, data.features.n_outputs)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    X, y = torch.from_numpy(data.X["train"]), torch.from_numpy(data.y["train"])
    Xv, yv = torch.from_numpy(data.X["val"]), torch.from_numpy(data.y["val"])
    n, bs = len(X), cfg.batch_size
    steps = -(-n // bs)  # same step count as trainfer (its drop-a-batch-of-one rule never fires here)
    total = steps * cfg.epochs
    train_s = 0.0
    t_loop, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n)
        for i in range(steps):
            lr = lr_at(epoch * steps + i, total, cfg.lr, cfg.schedule, cfg.warmup_fraction)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * bs:(i + 1) * bs]
            loss = loss_fn(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        train_s += time.perf_counter() - t0
        model.eval()
        ebs = cfg.eval_batch_size
        with torch.inference_mode():
            correct = sum(int((model(Xv[j:j + ebs]).argmax(1) == yv[j:j + ebs]).sum())
                          for j in range(0, len(Xv), ebs))
        _ = correct / len(Xv)  # the number early stopping would compare
    loop_s, cpu_s = time.perf_counter() - t_loop, time.process_time() - cpu0
    return n * cfg.epochs / loop_s, loop_s, train_s, cpu_s


def _bootstrap_ci(ratios: list[float]) -> list[float]:
    """95% bootstrap interval of the median ratio: says whether PASS/FAIL is more than noise."""
    boots = np.median(np.random.default_rng(0).choice(ratios, size=(2000, len(ratios))), axis=1)
    return [float(v) for v in np.percentile(boots, [2.5, 97.5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="interleaved A/B rounds (default 15, quick 3)")
    ap.add_argument("--quick", action="store_true", help="small data and few epochs, for smoke runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores, max 8)")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    n_samples, epochs, batch = (4000, 2, 128) if args.quick else (20000, 5, 128)
    threads = args.threads or min(os.cpu_count() or 1, 8)
    # Set once for the whole process, so both sides run at exactly the same thread count.
    torch.set_num_threads(threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs skew CPU timings

    recipe = make_recipe(n_samples, epochs, batch, threads)
    data = prepare(recipe.data, recipe.seed)  # the same arrays trainfer.train() prepares for itself
    n_train = len(data.y["train"])
    print(f"train_overhead: {n_train} train / {len(data.y['val'])} val samples, "
          f"mlp 64-256-256-{data.features.n_outputs}, batch {batch}, {epochs} epochs, {threads} threads,"
          f" {rounds} rounds")

    # Warm-up, unmeasured: first-call costs (lazy imports, allocator, kernel selection) hit one side only.
    warm = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 1})})
    run_trainfer(warm, n_train)
    run_baseline(warm, data)

    raw: list[dict[str, float]] = []
    for r in range(rounds):
        # Alternate who goes first (A B, B A, ...) so slow drift on a shared machine favours neither side.
        order = ("trainfer", "baseline") if r % 2 == 0 else ("baseline", "trainfer")
        res: dict[str, tuple[float, float, float, float]] = {}
        for side in order:
            res[side] = run_trainfer(recipe, n_train) if side == "trainfer" else run_baseline(recipe, data)
        (tf_sps, tf_loop, tf_train, tf_cpu), (bl_sps, bl_loop, bl_train, bl_cpu) = res["trainfer"], res["baseline"]
        raw.append({"trainfer_samples_per_s": tf_sps, "baseline_samples_per_s": bl_sps,
                    "trainfer_loop_s": tf_loop, "baseline_loop_s": bl_loop,
                    "trainfer_train_phase_s": tf_train, "baseline_train_phase_s": bl_train,
                    "trainfer_cpu_s": tf_cpu, "baseline_cpu_s": bl_cpu,
                    "ratio": tf_sps / bl_sps, "train_phase_ratio": bl_train / tf_train, "cpu_ratio": bl_cpu / tf_cpu})
        print(f"  round {r + 1}: trainfer {tf_sps:6.0f}/s ({tf_loop:.2f} s loop, {tf_train:.2f} s steps)"
              f" | baseline {bl_sps:6.0f}/s ({bl_loop:.2f} s loop, {bl_train:.2f} s steps)"
              f" | ratio {tf_sps / bl_sps:.3f}, cpu ratio {bl_cpu / tf_cpu:.3f}")

    def med(key: str) -> float:
        return statistics.median(x[key] for x in raw)

    # Median of the per-round (paired) ratios: each pair ran back to back, so shared-machine noise cancels.
    ratio, train_ratio = med("ratio"), med("train_phase_ratio")
    # Overhead = extra wall time per sample relative to the baseline (1/ratio - 1), in percent.
    overhead, train_overhead = 100 * (1 / ratio - 1), 100 * (1 / train_ratio - 1)
    ratios = [x["ratio"] for x in raw]
    cv = statistics.pstdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else 0.0
    passed = overhead <= GOAL_OVERHEAD_PCT
    ci = _bootstrap_ci(ratios)
    # CPU time (user + sys) of the same loops: other jobs on a shared machine stretch wall time far more than
    # the CPU time a loop needs, so this ratio stays readable when the wall-time ratios scatter.
    cpu_ratios = [x["cpu_ratio"] for x in raw]
    cpu_ratio, cpu_ci = statistics.median(cpu_ratios), _bootstrap_ci(cpu_ratios)
    cpu_overhead = 100 * (1 / cpu_ratio - 1)
    goal_ratio = 1 / (1 + GOAL_OVERHEAD_PCT / 100)
    conclusive = ci[0] >= goal_ratio or ci[1] < goal_ratio
    # Diagnostic only: best round of each side. Contention only ever slows a run down, so on a busy
    # machine the best runs are the closest to the true speeds when the paired ratios scatter.
    best_ratio = max(x["trainfer_samples_per_s"] for x in raw) / max(x["baseline_samples_per_s"] for x in raw)
    tf, bl = med("trainfer_samples_per_s"), med("baseline_samples_per_s")
    print(f"medians: trainfer {tf:.0f} vs baseline {bl:.0f} samples/s; loop ratio {ratio:.3f} -> overhead"
          f" {overhead:+.1f}% (goal <= {GOAL_OVERHEAD_PCT:.0f}%) {'PASS' if passed else 'FAIL'};"
          f" ratio CV {100 * cv:.1f}%")
    print(f"ratio 95% CI [{ci[0]:.3f}, {ci[1]:.3f}] vs goal ratio {goal_ratio:.3f}:"
          f" {'conclusive' if conclusive else 'inconclusive'}; best-vs-best ratio {best_ratio:.3f}")
    print(f"cpu time: ratio {cpu_ratio:.3f} -> overhead {cpu_overhead:+.1f}%, 95% CI [{cpu_ci[0]:.3f}, {cpu_ci[1]:.3f}]"
          f" ({'within' if cpu_overhead <= GOAL_OVERHEAD_PCT else 'over'} the goal)")
    print(f"train phase only (steps, no eval/checkpoint): ratio {train_ratio:.3f} -> overhead"
          f" {train_overhead:+.1f}%; the rest of the loop adds {overhead - train_overhead:+.1f} points")
    if cv > 0.05:
        print(f"warning: ratios vary by {100 * cv:.0f}% between rounds (load average {load_start} at start);"
              " the machine is busy, rerun when it is quiet")
    print(json.dumps({
        "benchmark": "train_overhead",
        "trainfer_samples_per_s": tf, "baseline_samples_per_s": bl,
        "ratio": ratio, "overhead_pct": overhead, "train_phase_ratio": train_ratio,
        "train_phase_overhead_pct": train_overhead, "ratio_cv": cv, "ratio_ci95": ci,
        "conclusive": conclusive, "best_vs_best_ratio": best_ratio,
        "cpu_ratio": cpu_ratio, "cpu_overhead_pct": cpu_overhead, "cpu_ratio_ci95": cpu_ci,
        "goal_overhead_pct": GOAL_OVERHEAD_PCT, "pass": passed, "rounds": rounds, "threads": threads,
        "config": {"quick": args.quick, "dataset": "synthetic-classification", "n_samples": n_samples,
                   "n_train": n_train, "n_val": len(data.y["val"]), "n_features": 64,
                   "n_classes": data.features.n_outputs,
                   "model": "mlp", "hidden": [256, 256], "batch_size": batch, "epochs": epochs,
                   "optimizer": "adamw", "schedule": recipe.train.schedule,
                   "grad_clip": recipe.train.grad_clip, "device": "cpu"},
        "env": {**environment(threads), "load_avg_1m_start": load_start}, "raw": raw,
    }))


if __name__ == "__main__":
    main()
