"""SingleStream (batch 1) latency: a bundle's predict_proba against torch eager and bare onnxruntime.

For the digits MLP and the image CNN, the same run is timed three ways, interleaved in one process:

  bundle            trainfer.load(bundle).predict_proba(raw)  (checks and the feed dict in Python + onnxruntime)
  torch_eager       run.model(x) + softmax under torch.inference_mode(), fp32, eval mode
  onnxruntime_bare  inference_session(bundle/model.onnx, threads).run(["probabilities"], feed): the bundle's
                    session on a ready feed dict (model.onnx is the whole pipeline: raw columns in, issue 14)

plus two diagnostics: bundle_preprocess, predictor.prepare(raw) alone (its checks and the copy); and
onnxruntime_bound, the same session run through IO binding on a buffer bound once (how the bundle runs rows of
numbers: session.run converts each of the graph's inputs on every call, which at digits' 64 inputs costs more
than the model). ``raw`` is one test
sample as the user passes it ((1, 64) float64 for digits, (1, 32, 32, 3) uint8 for the CNN); ``feed`` is
it as the graph's raw inputs (64 float32 [1, 1] arrays for digits; the uint8 image for the CNN); ``x`` is it
preprocessed for torch. Every variant runs at the same thread count. Rounds of blocks (one block of each
variant per round, the order rotating) repeat until every variant has the minimum count and the
interleaved window lasted the minimum duration, so each variant's samples span the whole window.

    .venv/bin/python benchmarks/inference_latency.py --quick   # 100 calls, 2 s window per model
    .venv/bin/python benchmarks/inference_latency.py           # 1000 calls, 10 s window per model

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
from _common import (
    ensure_bundle,
    environment,
    first_raw_row,
    interleave,
    paired_ratio,
    summarize,
    train_and_export,
)

GOAL_SPEEDUP = {"digits_mlp": 3.0, "cnn": 2.0}
GOAL_OVERHEAD_PCT = 10.0
WARMUP_CALLS = 50  # per variant, before measuring (MEASURE.md: at least 10)


def build_variants(run_dir: Path, bundle_dir: Path, threads: int) -> tuple[dict[str, Callable[[], Any]],
                                                                           dict[str, Any]]:
    """The timed callables for one model, and load times, first-call times and input shapes."""
    import torch

    import trainfer
    from trainfer.runtime import inference_session
    from trainfer.training import Run

    t0 = time.perf_counter()
    run = Run.load(run_dir)
    t1 = time.perf_counter()
    predictor = trainfer.load(bundle_dir, threads=threads)
    t2 = time.perf_counter()
    # The bundle's own session settings: the overhead measured is the bundle's Python work, nothing else.
    session = inference_session(bundle_dir / "model.onnx", threads)
    t3 = time.perf_counter()

    raw = first_raw_row(run)
    feed = predictor.feed(raw)  # what the whole graph takes: one array per raw input, ready
    xt = torch.from_numpy(run.features.transform(raw))  # what the torch model takes
    model = run.model.eval()

    def torch_eager() -> Any:
        with torch.inference_mode():
            return torch.softmax(model(xt), dim=1)

    fns: dict[str, Callable[[], Any]] = {
        "bundle": lambda: predictor.predict_proba(raw),
        "torch_eager": torch_eager,
        "onnxruntime_bare": lambda: session.run(["probabilities"], feed),
        "bundle_preprocess": lambda: predictor.prepare(raw),
        "onnxruntime_bound": _bound(session, feed),
    }
    first_ms: dict[str, float] = {}
    outs: dict[str, Any] = {}
    for key, fn in fns.items():  # cold start: each variant's first call, timed on its own
        t = time.perf_counter_ns()
        outs[key] = fn()
        first_ms[key] = (time.perf_counter_ns() - t) / 1e6
    # The three must compute the same probabilities, or the comparison means nothing.
    want = outs["torch_eager"].numpy()
    np.testing.assert_allclose(outs["bundle"], want, atol=1e-4)
    np.testing.assert_allclose(outs["onnxruntime_bare"][0], want, atol=1e-4)
    info = {"load_s": {"bundle": t2 - t1, "torch_eager": t1 - t0, "onnxruntime_bare": t3 - t2},
            "first_call_ms": first_ms,
            "input": {"raw_shape": list(raw.shape), "raw_dtype": str(raw.dtype),
                      "feed": {"inputs": len(feed), "shapes": sorted({str(list(v.shape)) for v in feed.values()})}}}
    return fns, info


def _bound(session: Any, feed: dict[str, Any]) -> Callable[[], Any]:
    io = session.io_binding()
    for k, v in feed.items():
        io.bind_input(k, "cpu", 0, v.dtype, list(v.shape), v.ctypes.data)
    io.bind_output("probabilities")

    def run() -> Any:
        session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()

    return run


def report(name: str, samples: dict[str, np.ndarray], info: dict[str, Any], block: int) -> dict[str, Any]:
    stats = {k: {**summarize(v), "first_call_ms": info["first_call_ms"][k],
                 **({"load_s": info["load_s"][k]} if k in info["load_s"] else {})} for k, v in samples.items()}
    b, t, o = stats["bundle"], stats["torch_eager"], stats["onnxruntime_bare"]
    res: dict[str, Any] = {**stats, "input": info["input"]}
    res["speedup_vs_torch_p50"] = t["latency_ms_p50"] / b["latency_ms_p50"]
    res["speedup_vs_torch_p90"] = t["latency_ms_p90"] / b["latency_ms_p90"]
    res["speedup_vs_torch_p50_paired"] = paired_ratio(samples["torch_eager"], samples["bundle"], block)
    res["goal_speedup"] = GOAL_SPEEDUP[name]
    res["overhead_vs_bare_p50_pct"] = 100 * (b["latency_ms_p50"] / o["latency_ms_p50"] - 1)
    res["overhead_vs_bare_p90_pct"] = 100 * (b["latency_ms_p90"] / o["latency_ms_p90"] - 1)
    res["overhead_vs_bare_p50_pct_paired"] = 100 * (paired_ratio(samples["bundle"], samples["onnxruntime_bare"],
                                                                 block) - 1)
    res["goal_overhead_pct"] = GOAL_OVERHEAD_PCT
    res["pass_speedup"] = min(res["speedup_vs_torch_p50"], res["speedup_vs_torch_p90"]) >= GOAL_SPEEDUP[name]
    res["pass_overhead"] = res["overhead_vs_bare_p50_pct"] <= GOAL_OVERHEAD_PCT
    res["pass"] = res["pass_speedup"] and res["pass_overhead"]
    return res


def print_table(name: str, res: dict[str, Any], rounds: int, window: float) -> None:
    print(f"\n{name}: input {res['input']['raw_shape']} {res['input']['raw_dtype']}, {rounds} rounds, "
          f"{window:.1f} s window")
    print(f"  {'variant':<18}{'n':>8}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}{'mean us':>10}{'cv':>7}"
          f"{'first ms':>10}")
    for key in ("bundle", "torch_eager", "onnxruntime_bare", "bundle_preprocess", "onnxruntime_bound"):
        s = res[key]
        us = [f"{1e3 * s[f'latency_ms_{q}']:10.1f}" if s.get(f"latency_ms_{q}") is not None else f"{'-':>10}"
              for q in ("p50", "p90", "p99", "mean")]
        print(f"  {key:<18}{s['samples']:>8}{''.join(us)}{s['cv']:7.2f}{s['first_call_ms']:10.2f}")
    print(f"  speedup vs torch: p50 {res['speedup_vs_torch_p50']:.2f}x, p90 {res['speedup_vs_torch_p90']:.2f}x "
          f"(paired {res['speedup_vs_torch_p50_paired']:.2f}x; goal >= {res['goal_speedup']:.0f}x) "
          f"{'PASS' if res['pass_speedup'] else 'FAIL'}")
    print(f"  overhead vs bare onnxruntime: p50 {res['overhead_vs_bare_p50_pct']:+.1f}% "
          f"(paired {res['overhead_vs_bare_p50_pct_paired']:+.1f}%; goal <= {GOAL_OVERHEAD_PCT:.0f}%) "
          f"{'PASS' if res['pass_overhead'] else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 calls / 2 s per model; shorter training")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    ap.add_argument("--block", type=int, default=50, help="timed calls per variant per round")
    ap.add_argument("--min-rounds", type=int, default=20)
    for model in ("digits", "cnn"):
        ap.add_argument(f"--{model}-run", type=Path, help=f"existing {model} run (default: train one)")
        ap.add_argument(f"--{model}-bundle", type=Path, help=f"existing {model} bundle (default: export the run)")
    ap.add_argument("--samples-out", type=Path, help="write every raw per-call sample (ns) to this JSON file")
    args = ap.parse_args()
    min_count, min_s = (100, 2.0) if args.quick else (1000, 10.0)

    results: dict[str, Any] = {}
    raw: dict[str, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        paths: dict[str, tuple[Path, Path]] = {}
        for name, given_run, given_bundle in (("digits_mlp", args.digits_run, args.digits_bundle),
                                              ("cnn", args.cnn_run, args.cnn_bundle)):
            if given_run is None:
                print(f"training {name} into {work} ...", flush=True)
                paths[name] = train_and_export(name, work, epochs=5 if args.quick and name == "digits_mlp" else None)
            else:
                paths[name] = (given_run, ensure_bundle(given_run, given_bundle, work / f"{name}-bundle"))

        import torch  # after training, which runs at torch's default thread count

        torch.set_num_threads(args.threads)
        with contextlib.suppress(RuntimeError):  # only settable before inter-op work starts
            torch.set_num_interop_threads(1)
        for name, (run_dir, bundle_dir) in paths.items():
            fns, info = build_variants(run_dir, bundle_dir, args.threads)
            m = interleave(fns, min_count, min_s, warmup=WARMUP_CALLS, block=args.block, min_rounds=args.min_rounds)
            samples, rounds, window = m.samples, m.rounds, m.window_s
            results[name] = {**report(name, samples, info, args.block), "rounds": rounds, "window_s": window}
            raw[name] = {k: np.rint(v * 1e9).astype(np.int64).tolist() for k, v in samples.items()}
            print_table(name, results[name], rounds, window)

    if args.samples_out:
        args.samples_out.write_text(json.dumps({"unit": "ns", "block": args.block, "samples": raw}))
    print(json.dumps({
        "benchmark": "inference_latency", "scenario": "SingleStream", "threads": args.threads,
        "pass": all(r["pass"] for r in results.values()), "models": results,
        "config": {"quick": args.quick, "block": args.block, "min_rounds": args.min_rounds,
                   "min_count": min_count, "min_window_s": min_s, "warmup_calls": WARMUP_CALLS,
                   "torch_output": "tensor (no .numpy())", "ort_intra_op_threads": args.threads,
                   "ort_inter_op_threads": 1, "ort_graph_optimization": "ORT_ENABLE_ALL"},
        "env": environment(args.threads),
    }))


if __name__ == "__main__":
    main()
