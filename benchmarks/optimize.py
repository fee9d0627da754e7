"""`trainfer.optimize` on the 3x32x32 CNN: the variants table, then the chosen bundle end to end against torch.

Trains the cnn on synthetic-images, runs trainfer.optimize (every variant, default 0.5-point budget) and
prints its table. Then, interleaved in one process at one thread count (rounds of blocks, order rotating):

  chosen       trainfer.load(optimized bundle, threads=T).predict_proba(raw uint8 image[None])
  fp32         the same for trainfer.export(run) (the onnx-fp32 baseline: what plain export gives)
  torch_eager  run.model, eval + inference_mode, softmax, on the preprocessed tensor, torch threads T

Goal: chosen >= 3x faster than torch eager at p50 (p90 reported too).

    .venv/bin/python benchmarks/optimize.py --quick   # 1000 samples, 3 epochs; 100 calls / 2 s window
    .venv/bin/python benchmarks/optimize.py           # 2000 samples, 4 epochs; 1000 calls / 10 s window

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, first_raw_row, interleave, paired_ratio, summarize

GOAL_SPEEDUP = 3.0
WARMUP_CALLS = 50  # per callable, before measuring (MEASURE.md: at least 10)
VARIANT_KEYS = ("name", "status", "val_accuracy", "test_accuracy", "val_drop", "val_drop_bound", "test_drop",
                "latency_ms_p50", "latency_ms_p90", "size_mb", "params", "flops", "flops_note", "speedup_vs_torch",
                "reason")


def build_fns(run: Any, chosen_dir: Path, fp32_dir: Path, threads: int) -> tuple[dict[str, Callable[[], Any]],
                                                                                  dict[str, Any]]:
    """The three timed callables, with load times, first-call times and a parity check."""
    import torch

    import trainfer

    t0 = time.perf_counter()
    chosen = trainfer.load(chosen_dir, threads=threads)
    t1 = time.perf_counter()
    fp32 = trainfer.load(fp32_dir, threads=threads)
    t2 = time.perf_counter()
    raw = first_raw_row(run)  # (1, 32, 32, 3) uint8, as a user passes it
    xt = torch.from_numpy(run.features.transform(raw))  # what the torch model takes
    model = run.model.eval()

    def torch_eager() -> Any:
        with torch.inference_mode():
            return torch.softmax(model(xt), dim=1)

    fns: dict[str, Callable[[], Any]] = {"chosen": lambda: chosen.predict_proba(raw),
                                         "fp32": lambda: fp32.predict_proba(raw), "torch_eager": torch_eager}
    first_ms, outs = {}, {}
    for key, fn in fns.items():  # cold start: each callable's first call, timed on its own
        t = time.perf_counter_ns()
        outs[key] = fn()
        first_ms[key] = (time.perf_counter_ns() - t) / 1e6
    want = outs["torch_eager"].numpy()
    np.testing.assert_allclose(outs["fp32"], want, atol=1e-4)  # lossless export: same probabilities
    # The chosen variant may be pruned (a fine-tuned copy) or int8: it need not match; report how close it is.
    parity = {"reference": "the run's torch fp32 model", "max_abs_diff": float(np.abs(outs["chosen"] - want).max()),
              "same_class": bool(outs["chosen"].argmax() == want.argmax())}
    info = {"load_s": {"chosen": t1 - t0, "fp32": t2 - t1}, "first_call_ms": first_ms, "chosen_parity": parity,
            "input": {"raw_shape": list(raw.shape), "raw_dtype": str(raw.dtype), "tensor_shape": list(xt.shape)}}
    return fns, info


def speedup(samples: dict[str, np.ndarray], stats: dict[str, dict[str, Any]], fast: str, slow: str,
            block: int) -> dict[str, Any]:
    """slow/fast at p50 and p90, and the median over rounds of the back-to-back block medians' ratio."""
    return {q: stats[slow][f"latency_ms_{p}"] / stats[fast][f"latency_ms_{p}"]
            for q, p in (("speedup_p50", "p50"), ("speedup_p90", "p90"))} | {
        "speedup_p50_paired": paired_ratio(samples[slow], samples[fast], block)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1000 samples, 3 epochs, 1 fine-tune epoch; 100 calls/2 s")
    ap.add_argument("--threads", type=int, default=1, help="threads for optimize, the bundles and torch")
    ap.add_argument("--block", type=int, default=50, help="timed calls per callable per round")
    args = ap.parse_args()
    n_samples, epochs, ft_epochs = (1000, 3, 1) if args.quick else (2000, 4, 2)
    min_count, min_s = (100, 2.0) if args.quick else (1000, 10.0)
    T = args.threads

    import torch
    from rich.console import Console

    import trainfer
    from trainfer.reporting.tables import STATUS, optimize_table

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        work = Path(tmp)
        print(f"training cnn ({n_samples} samples, {epochs} epochs) into {work} ...", flush=True)
        run = trainfer.train(data="synthetic-images", model="cnn", epochs=epochs, seed=0, out=work / "run",
                             quiet=True, overrides=[f"data.options.n_samples={n_samples}"])
        t_trained = time.perf_counter()
        record = trainfer.optimize(run, work / "optimized", threads=T, quick=args.quick, fine_tune_epochs=ft_epochs,
                                   log=lambda m: print(f"  [{time.perf_counter() - t_trained:6.1f} s] {m}", flush=True))
        t_optimized = time.perf_counter()
        console = Console(width=200)
        console.print(optimize_table(record))
        for r in record["variants"]:
            if r.get("reason"):
                console.print(f"{STATUS[r['status']]} {r['name']}: {r['reason']}")
        console.print(f"chosen: {record['chosen']} — {record['reason']}")
        fp32_dir = trainfer.export(run, work / "fp32")

        torch.set_num_threads(T)  # optimize restores the process's count when it returns
        with contextlib.suppress(RuntimeError):  # only settable before inter-op work starts
            torch.set_num_interop_threads(1)
        fns, info = build_fns(run, Path(record["bundle"]), fp32_dir, T)
        m = interleave(fns, min_count, min_s, warmup=WARMUP_CALLS, block=args.block)
        samples, rounds, window = m.samples, m.rounds, m.window_s
    t_end = time.perf_counter()

    stats = {k: {**summarize(v), "first_call_ms": info["first_call_ms"][k],
                 **({"load_s": info["load_s"][k]} if k in info["load_s"] else {})} for k, v in samples.items()}
    chosen_vs_torch = speedup(samples, stats, "chosen", "torch_eager", args.block)
    chosen_vs_torch |= {"goal": GOAL_SPEEDUP, "pass": chosen_vs_torch["speedup_p50"] >= GOAL_SPEEDUP}
    fp32_vs_torch = speedup(samples, stats, "fp32", "torch_eager", args.block)
    chosen_vs_fp32 = speedup(samples, stats, "chosen", "fp32", args.block)

    print(f"\nend to end, batch 1, {T} thread(s): {rounds} rounds of {args.block}, {window:.1f} s window")
    print(f"  {'':<12}{'n':>7}{'p50 us':>9}{'p90 us':>9}{'p99 us':>9}{'mean us':>9}{'cv':>6}{'first ms':>9}")
    for key, s in stats.items():
        us = "".join(f"{1e3 * s[f'latency_ms_{q}']:9.1f}" if s.get(f"latency_ms_{q}") is not None else f"{'-':>9}"
                     for q in ("p50", "p90", "p99", "mean"))
        print(f"  {key:<12}{s['samples']:>7}{us}{s['cv']:6.2f}{s['first_call_ms']:9.2f}")
    for label, sp in ((f"chosen ({record['chosen']})", chosen_vs_torch), ("onnx-fp32", fp32_vs_torch)):
        print(f"  {label} vs torch: p50 {sp['speedup_p50']:.2f}x, p90 {sp['speedup_p90']:.2f}x "
              f"(paired {sp['speedup_p50_paired']:.2f}x)")
    print(f"  goal: chosen >= {GOAL_SPEEDUP:.0f}x at p50: {'PASS' if chosen_vs_torch['pass'] else 'FAIL'}")

    rows = [{k: r.get(k) for k in VARIANT_KEYS} for r in record["variants"]]
    int8_dyn = next((r for r in rows if r["name"] == "int8-dynamic"), None)
    print(json.dumps({
        "benchmark": "optimize", "model": "cnn", "input": [3, 32, 32], "threads": T, "chosen": record["chosen"],
        "reason": record["reason"], "variants": rows, "chosen_vs_torch": chosen_vs_torch,
        "fp32_vs_torch": fp32_vs_torch, "chosen_vs_fp32": chosen_vs_fp32,
        "int8_dynamic_measured": bool(int8_dyn and int8_dyn["latency_ms_p50"] is not None),
        "end_to_end": {**stats, "rounds": rounds, "window_s": window, "chosen_parity": info["chosen_parity"],
                       "input": info["input"]},
        "optimize": {k: record[k] for k in ("max_accuracy_drop", "drop_unit", "metric", "batch_size",
                                            "recommended_threads", "torch_eager", "thread_sweep")},
        "timings_s": {"train": t_trained - t_start, "optimize": t_optimized - t_trained,
                      "total": t_end - t_start},
        "config": {"quick": args.quick, "data": "synthetic-images", "n_samples": n_samples, "epochs": epochs,
                   "fine_tune_epochs": ft_epochs, "train_threads": run.summary.get("threads"),
                   "test_accuracy_fp32_torch": run.summary["test"].get("accuracy"), "block": args.block,
                   "min_count": min_count, "min_window_s": min_s, "warmup_calls": WARMUP_CALLS,
                   "torch_input": "preprocessed tensor (no preprocessing timed)",
                   "bundle_input": "raw uint8 (1, 32, 32, 3) (numpy preprocessing timed)"},
        "env": environment(T),
    }, default=str))


if __name__ == "__main__":
    main()
