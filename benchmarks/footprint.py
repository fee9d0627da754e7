"""Footprint of one prediction in a fresh process: bundle (onnxruntime) against the run (torch).

Two child scripts, each a fresh interpreter, predict one raw digits row:

  bundle  import trainfer; p = trainfer.load(bundle); p.predict(row)   (asserts torch never loads)
  torch   import trainfer; r = trainfer.Run.load(run); r.predict(row)

Each child reports its peak RSS (VmHWM of /proc/self/status, MiB; see below) and how long it took to reach
its first prediction: from the parent's spawn (time.time() just before Popen) and from the child's
own first line. The parent also records the whole subprocess wall time (spawn to exit). After one
unmeasured warm-up each (page cache, .pyc files), the children run alternately, and medians are
reported. Goal: bundle <= 1/3 of torch for both peak RSS and time to first prediction.

Why VmHWM and not getrusage(RUSAGE_SELF).ru_maxrss: Linux carries the high-water mark of the address
space a process replaces at execve() into ru_maxrss, and a subprocess is forked (or vforked) from this
parent, which holds torch and the training data. Every child's ru_maxrss then reads the parent's RSS
(~380 MiB here for both sides). VmHWM is the peak of the child's own address space since exec. Both
are recorded (ru_maxrss_mb, for reference).

    .venv/bin/python benchmarks/footprint.py --quick   # 3 runs each
    .venv/bin/python benchmarks/footprint.py           # 7 runs each

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ensure_bundle, environment, first_raw_row, train_and_export

GOAL_RATIO = 0.333

_PRELUDE = """\
import time
t_first_line = time.perf_counter()
import json, resource, sys
import numpy as np
import trainfer
"""
_EPILOGUE = """\
t_done_wall = time.time()
t_done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"spawn_to_prediction_s": t_done_wall - float(sys.argv[3]),
                  "first_line_to_prediction_s": t_done - t_first_line, "load_s": t_loaded - t_load,
                  "prediction": [str(v) for v in y], "torch_loaded": "torch" in sys.modules,
                  "vm_hwm_kib": int(status["VmHWM"].split()[0]),
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
CHILDREN = {
    "bundle": _PRELUDE + """\
t_load = time.perf_counter()
p = trainfer.load(sys.argv[1], threads=int(sys.argv[4]))
t_loaded = time.perf_counter()
y = p.predict(np.load(sys.argv[2]))
assert "torch" not in sys.modules, "the bundle path imported torch"
""" + _EPILOGUE,
    "torch": _PRELUDE + """\
t_load = time.perf_counter()
r = trainfer.Run.load(sys.argv[1])
t_loaded = time.perf_counter()
y = r.predict(np.load(sys.argv[2]))
""" + _EPILOGUE,
}


def run_child(kind: str, target: Path, row: Path, threads: int) -> dict[str, Any]:
    """One fresh interpreter; its JSON report plus the parent's wall time from spawn to exit."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILDREN[kind], str(target), str(row), repr(t0), str(threads)],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed ({done.returncode}):\n{done.stderr}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["spawn_to_exit_s"] = wall
    out["peak_rss_mb"] = out["vm_hwm_kib"] / 1024
    out["ru_maxrss_mb"] = out["ru_maxrss_kib"] / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 measured runs each instead of 7; shorter training")
    ap.add_argument("--runs", type=int, default=None, help="measured runs per side")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op / OMP threads in the children")
    ap.add_argument("--run", type=Path, help="an existing digits MLP run (default: train one)")
    ap.add_argument("--bundle", type=Path, help="its bundle (default: export the run)")
    args = ap.parse_args()
    n = args.runs or (3 if args.quick else 7)

    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        if args.run is None:
            print(f"training digits_mlp into {work} ...", flush=True)
            run_dir, bundle_dir = train_and_export("digits_mlp", work, epochs=5 if args.quick else None)
        else:
            run_dir, bundle_dir = args.run, ensure_bundle(args.run, args.bundle, work / "bundle")
        from trainfer.training import Run

        row = work / "row.npy"
        np.save(row, first_raw_row(Run.load(run_dir)))
        targets = {"bundle": bundle_dir, "torch": run_dir}

        for kind in targets:  # unmeasured warm-up: page cache and bytecode caches for both sides
            run_child(kind, targets[kind], row, args.threads)
        raw: dict[str, list[dict[str, Any]]] = {"bundle": [], "torch": []}
        for i in range(n):
            order = ("bundle", "torch") if i % 2 == 0 else ("torch", "bundle")  # alternate who goes first
            for kind in order:
                raw[kind].append(run_child(kind, targets[kind], row, args.threads))
                r = raw[kind][-1]
                print(f"  {i + 1}/{n} {kind:<6} rss {r['peak_rss_mb']:6.1f} MiB  first prediction "
                      f"{r['spawn_to_prediction_s']:.3f} s (from first line {r['first_line_to_prediction_s']:.3f}"
                      f" s, load {r['load_s']:.3f} s)  exit {r['spawn_to_exit_s']:.3f} s", flush=True)

    if raw["bundle"][0]["prediction"] != raw["torch"][0]["prediction"]:
        raise SystemExit(f"bundle and torch disagree: {raw['bundle'][0]['prediction']} "
                         f"vs {raw['torch'][0]['prediction']}")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in raw[kind])

    keys = ("peak_rss_mb", "ru_maxrss_mb", "spawn_to_prediction_s", "first_line_to_prediction_s", "load_s",
            "spawn_to_exit_s")
    summary = {kind: {"peak_rss_mb": med(kind, "peak_rss_mb"),
                      "time_to_first_prediction_s": med(kind, "spawn_to_prediction_s"),
                      "first_line_to_prediction_s": med(kind, "first_line_to_prediction_s"),
                      "load_s": med(kind, "load_s"), "spawn_to_exit_s": med(kind, "spawn_to_exit_s"),
                      "torch_loaded": any(r["torch_loaded"] for r in raw[kind]), "runs": len(raw[kind])}
               for kind in raw}
    b, t = summary["bundle"], summary["torch"]
    rss_ratio = b["peak_rss_mb"] / t["peak_rss_mb"]
    time_ratio = b["time_to_first_prediction_s"] / t["time_to_first_prediction_s"]
    passed = rss_ratio <= GOAL_RATIO and time_ratio <= GOAL_RATIO
    print(f"\n{'median':<8}{'peak RSS MiB':>14}{'to 1st pred s':>15}{'from 1st line s':>17}{'exit s':>9}")
    for kind, s in summary.items():
        print(f"{kind:<8}{s['peak_rss_mb']:14.1f}{s['time_to_first_prediction_s']:15.3f}"
              f"{s['first_line_to_prediction_s']:17.3f}{s['spawn_to_exit_s']:9.3f}")
    print(f"ratios bundle/torch: rss {rss_ratio:.3f}, time {time_ratio:.3f} (goal <= {GOAL_RATIO}) "
          f"{'PASS' if passed else 'FAIL'}")
    print(json.dumps({
        "benchmark": "footprint", "bundle": b, "torch": t, "rss_ratio": rss_ratio, "time_ratio": time_ratio,
        "goal_ratio": GOAL_RATIO, "pass": passed,
        "config": {"quick": args.quick, "model": "digits_mlp", "threads": args.threads, "runs_per_side": n,
                   "rss": "VmHWM of the child (peak RSS since exec), MiB",
                   "time_to_first_prediction": "parent time.time() before spawn -> child after predict()"},
        "raw": {k: [{key: r[key] for key in keys} for r in v] for k, v in raw.items()},
        "env": environment(args.threads),
    }))


if __name__ == "__main__":
    main()
