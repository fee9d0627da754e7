"""Issue 11, acceptance 1: `trainfer tune` on digits with the default space, then best.yaml trained from scratch.

Runs, as a user would and each in its own process:
  trainfer tune examples/digits.yaml --out STUDY --trials 30 --workers 2      (no tune: section: default space)
  trainfer train STUDY/best.yaml --out RUN --seed S                           for S in --seeds (0,1,2)
  trainfer train examples/digits.yaml --out BASE --seed S                     the untuned recipe, for reference
Goals: the tune command's wall time <= 5 min, >= 30% of its trials pruned, and best.yaml's mean test accuracy
over the seeds >= 0.985.

Which seeds: a recipe's seed sets its split as well as the initial weights and batch order, so three training
seeds are three splits. The study tunes on the recipe's split (seed 0) and never reads its test rows, so seed 0's
test accuracy is strictly held out. Seeds 1 and 2 are other random splits of the same 1797 rows: about 15% of
their test rows were in the validation split the study selected on (and 70% in its training split), so they
measure whether the chosen settings carry over to new splits rather than giving three untouched test sets; both
the mean and seed 0 alone are printed. The same seeds train the untuned recipe. The default space was
measured on development splits, seeds 10-15 (`--set seed=10 --seeds 10`), not on these.

    .venv/bin/python benchmarks/tune_digits.py                 # ~1 min tuning + ~1 min training (2 cores, load 3)
    .venv/bin/python benchmarks/tune_digits.py --set seed=10 --seeds 10 --no-baseline   # a development split

The last line printed is one JSON record (with the honest outside-training share of benchmarks/tune.py).
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

from _common import ROOT, environment
from tune import outside_share, run_tune

GOALS = {"wall_s": 300.0, "pruned_share": 0.30, "test_accuracy_mean": 0.985}
UNTUNED_TEST_ACCURACY = 0.974  # examples/digits.yaml at seed 0, as the issue quotes it


def train(recipe: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """`trainfer train RECIPE --out OUT --seed S`; returns the run's summary.json with the wall time added."""
    cmd = [sys.executable, "-m", "trainfer.cli", "train", str(recipe), "--out", str(out), "--seed", str(seed),
           "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if proc.returncode != 0:
        raise SystemExit(f"trainfer train exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["command_wall_s"] = time.perf_counter() - t0
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "examples" / "digits.yaml",
                    help="a recipe without a tune: section (default examples/digits.yaml)")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2", help="training seeds for best.yaml (default 0,1,2)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="recipe override for the study (repeatable), e.g. seed=10 for a development split")
    ap.add_argument("--train-set", dest="train_sets", action="append", default=[],
                    help="override for the trainings from scratch only, e.g. train.threads=1 on a busy machine")
    ap.add_argument("--no-baseline", action="store_true", help="skip training the untuned recipe")
    ap.add_argument("--keep", type=Path, help="keep the study and runs in this new directory")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"tune_digits: {args.recipe.name}, {args.trials} trials, {args.workers} workers, default space; "
          f"best.yaml trained with seeds {seeds}; load average {load_start}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tune-digits-") as tmp:
        work = args.keep or Path(tmp)
        study = work / "study"
        summary = run_tune(study, args.sets, "--trials", args.trials, "--workers", args.workers,
                           recipe=str(args.recipe))
        c, best = summary["counts"], summary["best"]
        pruned = c["PRUNED"] / c["total"]
        share = outside_share(study, summary)
        print(f"study: {summary['command_wall_s']:.0f} s wall ({summary['command']['wall_s']:.0f} s in the workers), "
              f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; best trial {best['number']}: "
              f"val {best['values'][0]:.4f}, its test {best['test'].get('accuracy', float('nan')):.4f}; "
              f"params {json.dumps(best['params'])}", flush=True)
        print(f"outside training {100 * share['share']:.1f}% of workers x wall (summary.json: "
              f"{100 * share['optuna_share']:.1f}%; of the whole command {100 * share['command_share']:.1f}%)",
              flush=True)
        tuned: dict[int, float] = {}
        untuned: dict[int, float] = {}
        for seed in seeds:
            run = train(study / "best.yaml", work / f"best-seed{seed}", seed, args.train_sets)
            tuned[seed] = run["test"]["accuracy"]
            line = f"  seed {seed}: best.yaml test {tuned[seed]:.4f} (val {run['val']['accuracy']:.4f})"
            if not args.no_baseline:
                base = train(args.recipe, work / f"untuned-seed{seed}", seed, args.train_sets)
                untuned[seed] = base["test"]["accuracy"]
                line += f"; untuned recipe test {untuned[seed]:.4f}"
            print(line, flush=True)
    mean = statistics.mean(tuned.values())
    figures = {"wall_s": summary["command_wall_s"], "pruned_share": pruned, "test_accuracy_mean": mean}
    passed = {"wall_s": figures["wall_s"] <= GOALS["wall_s"], "pruned_share": pruned >= GOALS["pruned_share"],
              "test_accuracy_mean": mean >= GOALS["test_accuracy_mean"]}
    for key, goal in GOALS.items():
        op = "<=" if key == "wall_s" else ">="
        print(f"goal {key} {op} {goal:g}: {figures[key]:.4g} {'PASS' if passed[key] else 'FAIL'}")
    if untuned:
        print(f"untuned recipe mean test {statistics.mean(untuned.values()):.4f} on the same seeds")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_start is not None and max(load_start, load_end or 0) > (os.cpu_count() or 1):
        print(f"warning: load average {load_start:.1f} -> {load_end:.1f} on {os.cpu_count()} cores: other jobs "
              "stretch the wall time; rerun on a quiet machine")
    print(json.dumps({
        "benchmark": "tune_digits", "recipe": str(args.recipe), "trials": args.trials, "workers": args.workers,
        "study_overrides": args.sets, "seeds": seeds, "wall_s": figures["wall_s"],
        "workers_wall_s": summary["command"]["wall_s"], "pruned_share": pruned, "counts": c,
        "best_trial": {"number": best["number"], "val": best["values"][0], "test": best["test"],
                       "params": best["params"]},
        "test_accuracy": {str(k): v for k, v in tuned.items()}, "test_accuracy_mean": mean,
        "test_accuracy_seed0": tuned.get(0),
        "untuned_test_accuracy": {str(k): v for k, v in untuned.items()},
        "untuned_test_accuracy_mean": statistics.mean(untuned.values()) if untuned else None,
        "untuned_quoted": UNTUNED_TEST_ACCURACY, "outside_share": share, "goals": GOALS, "pass": passed,
        "space": summary["space"], "env": {**environment(None), "load_avg_1m_start": load_start,
                                           "load_avg_1m_end": load_end},
    }))


if __name__ == "__main__":
    main()
