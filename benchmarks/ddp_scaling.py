"""Samples/s of 1 process x T threads against `trainfer train --nproc 2` (2 processes x T/2 threads, DDP on gloo).

Two models on digits: the MLP on the 64 features, and the CNN on the same digits as 8x8 images (written once
to an .npz, grey replicated to 3 channels). Each run is a fresh `trainfer train` command (the CLI a user runs);
its samples/s is summary.json's median over epochs (global samples per second of train steps; epoch 1's
warm-up is the lowest and does not move the median of 5). Runs are interleaved A B B A ... in one invocation,
and the figure is the median of the per-pair ratios (MEASURE.md: A against B in the same run, interleaved).

`--exit-runs N` (default 10) then runs N consecutive tiny 2-process trainings and counts exit 0: DDP on gloo
aborted at exit in 25-50% of runs before the shutdown order in training/distributed.py.

    .venv/bin/python benchmarks/ddp_scaling.py [--quick] [--repeats 3] [--exit-runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
COMMON = ["--seed", "0", "--set", "train.patience=null", "--set", "train.batch_size=64", "--quiet", "--json"]


def digits_images(path: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    np.savez(path, X=np.repeat(grey[..., None], 3, axis=-1), y=d.target.astype(np.int64))
    return path


def train(args: list[str], out: Path, nproc: int | None, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trainfer", "train", *args, *COMMON, "--out", str(out)]
    cmd += ["--nproc", str(nproc), "--set", f"train.threads={max(1, threads // nproc)}"] if nproc else \
        ["--set", f"train.threads={threads}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    s = json.loads(done.stdout.splitlines()[-1])
    return {"samples_per_s": s["samples_per_s"], "wall_s": wall, "threads_per_process": s["processes"][
        "threads_per_process"], "world_size": s["processes"]["world_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 pair per model, 2 epochs, 3 exit runs")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved pairs per model")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--exit-runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="T: threads of the 1-process run (2 x T/2 for DDP)")
    a = ap.parse_args()
    repeats, epochs, exit_runs = (1, 2, 3) if a.quick else (a.repeats, a.epochs, a.exit_runs)
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        root = Path(tmp)
        images = digits_images(root / "digits8.npz")
        models = {
            "mlp": ["--data", "digits", "--model", "mlp"],
            "cnn": ["--data", str(images), "--model", "cnn", "--set", "model.channels=[16,32]"],
        }
        rows: dict[str, Any] = {}
        for name, args in models.items():
            args = [*args, "--epochs", str(epochs)]
            one: list[float] = []
            two: list[float] = []
            for r in range(repeats):  # A B, then B A: neither variant always runs first
                order = [(1, one), (2, two)] if r % 2 == 0 else [(2, two), (1, one)]
                for nproc, sink in order:
                    rec = train(args, root / f"{name}-{nproc}-{r}", nproc if nproc > 1 else None, a.threads)
                    sink.append(rec["samples_per_s"])
                    print(f"{name}: {nproc} process(es) x {rec['threads_per_process']} thread(s): "
                          f"{rec['samples_per_s']:,.0f} samples/s ({rec['wall_s']:.1f} s wall)", flush=True)
            ratios = [b / x for x, b in zip(one, two, strict=True)]
            rows[name] = {"one_process_samples_per_s": one, "two_process_samples_per_s": two,
                          "two_over_one_ratio_median": float(np.median(ratios)), "ratios": ratios}
        ok = 0
        for i in range(exit_runs):
            done = subprocess.run([sys.executable, "-m", "trainfer", "train", "--data", "digits", "--model", "mlp",
                                   "--epochs", "1", "--nproc", "2", "--quiet", "--out", str(root / f"exit-{i}")],
                                  env=ENV, capture_output=True, text=True, timeout=300)
            ok += done.returncode == 0
            if done.returncode != 0:
                print(f"exit run {i}: exit {done.returncode}: {done.stderr.strip()[-500:]}", flush=True)
    print(f"\n{'model':6} {'1 x T samples/s':>16} {'2 x T/2 samples/s':>18} {'2-proc / 1-proc':>16}")
    for name, row in rows.items():
        print(f"{name:6} {np.median(row['one_process_samples_per_s']):16,.0f} "
              f"{np.median(row['two_process_samples_per_s']):18,.0f} {row['two_over_one_ratio_median']:16.2f}")
    print(f"consecutive 2-process runs that exited 0: {ok} of {exit_runs}")
    print(json.dumps({"benchmark": "ddp_scaling", "threads_one_process": a.threads,
                      "threads_per_process_two": max(1, a.threads // 2), "epochs": epochs, "repeats": repeats,
                      "batch_size_global": 64, "models": rows, "exit_runs": exit_runs, "exit_runs_ok": ok,
                      "environment": environment(a.threads)}))


if __name__ == "__main__":
    main()
