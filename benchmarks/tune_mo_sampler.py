"""Which sampler finds the better accuracy-vs-FLOPs front on tune's default budget: TPE or NSGA-II?

`trainfer tune --objectives accuracy,flops` on digits with the default MLP space, the default budget of
30 trials, one worker, per sampler and seed. Reports per sampler: the hypervolume of the validation front
in (accuracy above 0.90) x (decades of FLOPs saved below the largest model), the best validation
accuracy, and the front's size, mean and spread over seeds. The two samplers are run alternately (seed by
seed) so that the machine's load drifts over both alike.

    .venv/bin/python benchmarks/tune_mo_sampler.py [--trials 30] [--seeds 0 1 2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ACC_FLOOR = 0.90


def hypervolume(points: list[tuple[float, float]], flops_ref: float) -> float:
    """2-D hypervolume of (accuracy, FLOPs) points: accuracy above ACC_FLOOR x log10(flops_ref / FLOPs)."""
    pts = sorted(((a, math.log10(flops_ref / f)) for a, f in points if a > ACC_FLOOR and f < flops_ref),
                 key=lambda p: -p[0])
    hv, best_saving = 0.0, 0.0
    for acc, saving in pts:  # most accurate first: each point adds the saving beyond those more accurate
        if saving > best_saving:
            hv += (acc - ACC_FLOOR) * (saving - best_saving)
            best_saving = saving
    return hv


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--samplers", nargs="+", default=["tpe", "nsga2"])
    args = p.parse_args()

    import trainfer

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for sampler in args.samplers:
                t0 = time.perf_counter()
                study = trainfer.tune(out=Path(tmp) / f"{sampler}-{seed}", trials=args.trials, sampler=sampler,
                                      objectives="accuracy,flops", seed=seed,
                                      overrides=["data.source=digits", f"train.epochs={args.epochs}"])
                done = [t for t in study.summary["trials"] if t["state"] == "COMPLETE"]
                rows.append({"sampler": sampler, "seed": seed, "wall_s": time.perf_counter() - t0,
                             "points": [(t["values"][0], t["values"][1]) for t in done],
                             "front": [(t["values"][0], t["values"][1]) for t in study.pareto]})
                print(f"{sampler} seed {seed}: {len(done)} complete, front {rows[-1]['front']}", file=sys.stderr)
    flops_ref = 1.1 * max(f for r in rows for _, f in r["points"])
    result = {}
    for sampler in args.samplers:
        mine = [r for r in rows if r["sampler"] == sampler]
        hv = [hypervolume(r["front"], flops_ref) for r in mine]
        best = [max(a for a, _ in r["points"]) for r in mine]
        result[sampler] = {"hypervolume": hv, "hypervolume_mean": statistics.mean(hv),
                           "hypervolume_sd": statistics.stdev(hv) if len(hv) > 1 else 0.0,
                           "best_val_accuracy": best, "front_size": [len(r["front"]) for r in mine],
                           "wall_s": [r["wall_s"] for r in mine]}
        print(f"{sampler:6s} hypervolume {statistics.mean(hv):.4f} +- {result[sampler]['hypervolume_sd']:.4f}  "
              f"best val acc {', '.join(f'{b:.4f}' for b in best)}  front sizes {result[sampler]['front_size']}")
    print(json.dumps({"benchmark": "tune_mo_sampler", "trials": args.trials, "epochs": args.epochs,
                      "seeds": args.seeds, "flops_ref": flops_ref, "acc_floor": ACC_FLOOR, "result": result,
                      "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
