"""Data larger than memory: an MLP trained on a >= 2 GB Parquet table within 1 GB of peak RSS, and the
streaming path against the in-memory path on a 100 MB slice (same metrics, samples/s).

1. Generates a Parquet table of 64 float32 features and an int8 label (label = sign of a fixed linear
   function of the features plus noise), 8,388,608 rows = 2 GiB of float32 feature values, written in
   chunks of 262,144 rows (generation itself stays small) under a temporary folder, removed at the end.
2. Trains an MLP [64] for 1 epoch on it in a child process with `data.streaming: auto` (the file is above
   the default 1024 MiB threshold). Peak RSS is the child's VmHWM, read by the child from /proc at its end
   (ru_maxrss is not used: Linux carries the forking parent's peak into it across exec). Goal: <= 1024 MiB.
3. On a 409,600-row table from the same generator (100 MiB of float32 values) trains the same recipe in memory
   (`data.streaming: false`) and streamed (`true`), interleaved A B, B A, ... in one process, same seed:
   the test metrics must be equal, and the training loop's samples/s (median over rounds of the per-round
   ratio) is reported, goal >= 0.7x. End-to-end seconds (streaming's extra passes over the file included)
   are reported beside it.

    .venv/bin/python benchmarks/streaming.py            # ~5-10 min on 2 cores
    .venv/bin/python benchmarks/streaming.py --quick    # smoke run: 256 MiB table, 25 MiB slice

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, environment

FEATURES = 64
GEN_CHUNK = 262_144


def generate(path: Path, rows: int, seed: int = 0) -> float:
    """Write ``rows`` rows in chunks; returns the seconds it took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = time.perf_counter()
    w = np.random.default_rng(12345).normal(size=FEATURES).astype(np.float32)
    schema = pa.schema([*(pa.field(f"x{i}", pa.float32()) for i in range(FEATURES)), pa.field("label", pa.int8())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for k, start in enumerate(range(0, rows, GEN_CHUNK)):
            n = min(GEN_CHUNK, rows - start)
            rng = np.random.default_rng([seed, k])
            x = rng.standard_normal((n, FEATURES), dtype=np.float32)
            label = ((x @ w + rng.standard_normal(n, dtype=np.float32) * 2.0) > 0).astype(np.int8)
            cols = [pa.array(x[:, i]) for i in range(FEATURES)] + [pa.array(label)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=GEN_CHUNK)
    return time.perf_counter() - t


def recipe(source: Path, streaming: bool | str, threads: int, epochs: int = 1) -> dict[str, Any]:
    return {"seed": 0, "data": {"source": str(source), "target": "label", "streaming": streaming},
            "model": {"name": "mlp", "hidden": [64]},
            "train": {"epochs": epochs, "batch_size": 1024, "patience": None, "device": "cpu", "threads": threads,
                      "eval_batch_size": 8192}}


CHILD = """
import json, sys, time
t = time.perf_counter()
import trainfer
rec = json.loads(sys.argv[1])
run = trainfer.train(rec, out=sys.argv[2], quiet=True)
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) / 1024
print(json.dumps({"vmhwm_mib": hwm, "wall_s": time.perf_counter() - t, "summary": run.summary}))
"""


def big_run(source: Path, out: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe(source, "auto", threads)), str(out)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the training child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slice_rounds(source: Path, work: Path, rounds: int, threads: int) -> dict[str, Any]:
    import trainfer

    results: dict[str, list[dict[str, Any]]] = {"memory": [], "streaming": []}
    for r in range(rounds + 1):  # round 0 is a warm-up, not counted
        order = ("memory", "streaming") if r % 2 == 0 else ("streaming", "memory")
        for side in order:
            out = work / f"slice-{side}-{r}"
            t = time.perf_counter()
            run = trainfer.train(recipe(source, side != "memory", threads), out=out,
                                 quiet=True)
            wall = time.perf_counter() - t
            s = run.summary
            if r:
                results[side].append({"samples_per_s": s["samples_per_s"], "wall_s": wall, "test": s["test"],
                                      "val": s["val"], "train": s["train"]})
            shutil.rmtree(out)
    same = all(m[k] == st[k] for m, st in zip(results["memory"], results["streaming"], strict=True)
               for k in ("train", "val", "test"))
    ratios = [st["samples_per_s"] / m["samples_per_s"]
              for m, st in zip(results["memory"], results["streaming"], strict=True)]
    return {
        "metrics_identical": same,
        "test_memory": results["memory"][0]["test"], "test_streaming": results["streaming"][0]["test"],
        "samples_per_s_memory": statistics.median(x["samples_per_s"] for x in results["memory"]),
        "samples_per_s_streaming": statistics.median(x["samples_per_s"] for x in results["streaming"]),
        "streaming_vs_memory_samples_per_s": statistics.median(ratios),
        "ratios": ratios,
        "wall_s_memory": statistics.median(x["wall_s"] for x in results["memory"]),
        "wall_s_streaming": statistics.median(x["wall_s"] for x in results["streaming"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 256 MiB table and a 25 MiB slice, 2 rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved slice rounds (default 3, quick 2)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the table (default: a temp folder)")
    args = ap.parse_args()
    rows = (1 << 20) if args.quick else (8 << 20)  # 256 MiB or 2 GiB of float32 feature values
    slice_rows = 102_400 if args.quick else 409_600  # 25 or 100 MiB of float32 values
    rounds = args.rounds or (2 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=args.dir))
    try:
        table = tmp / "big.parquet"
        gen_s = generate(table, rows)
        size_mib = table.stat().st_size / 2**20
        values_mib = rows * FEATURES * 4 / 2**20
        print(f"streaming: {rows:,} rows x {FEATURES} float32 features = {values_mib:,.0f} MiB of values; "
              f"{table.name} {size_mib:,.0f} MiB on disk, generated in {gen_s:.0f} s")
        big = big_run(table, tmp / "big-run", args.threads)
        s = big["summary"]
        print(f"  1 epoch, streamed: peak RSS (VmHWM) {big['vmhwm_mib']:,.0f} MiB (goal <= 1024), "
              f"{big['wall_s']:.0f} s wall, {s['samples_per_s']:,.0f} samples/s, test accuracy "
              f"{s['test']['accuracy']:.4f}")
        small = tmp / "slice.parquet"
        generate(small, slice_rows)  # the same generator and seed (its first chunk is the big table's)
        sl = slice_rounds(small, tmp, rounds, args.threads)
        print(f"  slice {slice_rows:,} rows ({slice_rows * FEATURES * 4 / 2**20:.0f} MiB): metrics identical "
              f"{sl['metrics_identical']}; samples/s memory {sl['samples_per_s_memory']:,.0f}, streaming "
              f"{sl['samples_per_s_streaming']:,.0f}: {sl['streaming_vs_memory_samples_per_s']:.2f}x (goal >= 0.7); "
              f"end to end {sl['wall_s_memory']:.1f} s vs {sl['wall_s_streaming']:.1f} s")
        record = {
            "benchmark": "streaming", "quick": args.quick, "rows": rows, "features": FEATURES,
            "float32_values_mib": values_mib, "parquet_mib": size_mib, "generate_s": gen_s,
            "big_peak_rss_mib": big["vmhwm_mib"], "big_peak_rss_goal_mib": 1024,
            "big_peak_rss_ok": big["vmhwm_mib"] <= 1024, "big_wall_s": big["wall_s"],
            "big_samples_per_s": s["samples_per_s"], "big_test": s["test"], "big_timings": s["timings"],
            "slice_rows": slice_rows, "rounds": rounds, **{f"slice_{k}": v for k, v in sl.items()},
            "environment": environment(args.threads),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
