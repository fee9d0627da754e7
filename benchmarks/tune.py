"""`trainfer tune`: TPE against random sampling, and the wall time a study spends outside its trials.

For each data set (digits, breast_cancer: the default recipe with `--set data.source=NAME`, so the default
search space) and each sampler (tpe, random), one study per seed S = 0, 1, 2 (`--seed S --set seed=S`: the
sampler's seed and the split; on one split the validation accuracy of digits saturated at 0.9963 for every
study, so there was no spread to compare), the same trial budget and the default pruner, each run as
`trainfer tune` in its own process, as a user runs it. At one seed both samplers see the same split and the
same first trials (TPE starts with random trials from the same seed): a paired comparison. Studies run in the
order (seed, data set, sampler) so drift on a shared machine hits both alike. Reports the best validation
metric per sampler (mean, min, max, std over the seeds), and, finer when the best saturates, the mean of the
completed trials and the trial at which the best was first reached; goal: TPE's mean best >= random's on both
data sets (figures printed either way).

Time outside trials, measured honestly: summary.json's `command.outside_trials_share` is 1 - (sum of Optuna
trial durations) / (workers x wall), and an Optuna trial's duration also holds the sampler, every database
write of the trial, the pruner's per-epoch checks and, for a worker's first trial, the import of torch and the
data preparation. Here only training counts as inside: each trial's training loop (`train_s`, the loop's own
`timings.total_s`) minus its per-epoch pruning checks (report + should_prune, timed afterwards on a copy of the
study database, times the trial's reports). Everything else is outside, split into: pruning checks, in-trial
bookkeeping (duration - training: sampler, trial database writes, first-trial imports and data), between
trials (a worker's gaps: tell, claim, next trial) and start/end (process start, imports, study load; the wait
for the last trial of the other worker, exit, the command's polling). Goal: <= 5% of workers x wall, pooled
over the studies, with summary.json's wall (from the workers' start to their end) so that the two figures
differ only in what counts as inside; the share of the whole command (its own start, the study set-up, and
the end: importances, the best trial scored on the test split) is printed beside it.

    .venv/bin/python benchmarks/tune.py                    # 2 x 2 x 3 studies of 24 trials: ~9 min on 2 cores, load 2-4
    .venv/bin/python benchmarks/tune.py --trials 10 --seeds 1 --datasets breast_cancer   # smoke run

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

from _common import ROOT, environment

GOAL_OUTSIDE_SHARE = 0.05
SAMPLERS = ("tpe", "random")


def run_tune(study: Path, overrides: list[str], *extra: object, recipe: str | None = None) -> dict[str, Any]:
    """`trainfer tune` as a user runs it; returns its summary.json with the command's wall time (s) added."""
    cmd = [sys.executable, "-m", "trainfer.cli", "tune", *([recipe] if recipe else []), "--out", str(study),
           "--quiet", *map(str, extra)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trainfer tune exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    summary = json.loads((study / "summary.json").read_text())
    summary["command_wall_s"] = wall
    return summary


def _check_cost_s(study: Path, summary: dict[str, Any], calls: int = 40) -> float:
    """Seconds of one per-epoch pruning check (trial.report + trial.should_prune), timed on a copy of the study's
    database with a pruner that always computes (the tuned one skips the median during its warm-up)."""
    import optuna

    from trainfer.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="tune-check-") as tmp:
        db = Path(tmp) / "study.db"
        shutil.copy(study / "study.db", db)
        s = optuna.load_study(study_name=summary["study"], storage=open_storage(f"sqlite:///{db}"),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat ... supposed to be used with Study.optimize"
            trial = s.ask()
        times = []
        for step in range(1, calls + 1):
            t0 = time.perf_counter()
            trial.report(0.5, step)
            trial.should_prune()
            times.append(time.perf_counter() - t0)
        s.tell(trial, state=optuna.trial.TrialState.FAIL)
    return statistics.median(times)


def outside_share(study: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The wall-time share of this command's workers spent outside training, with its parts (see the docstring)."""
    import optuna

    from trainfer.tuning.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cmd = summary["command"]
    workers, wall = cmd["workers"], cmd["wall_s"]
    s = optuna.load_study(study_name=summary["study"], storage=open_storage(f"sqlite:///{study / 'study.db'}"))
    trials = [t for t in s.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    trials = sorted(trials, key=lambda t: t.number)[-cmd["trials"]:]  # this command's (the benchmarks' are fresh)
    pruning = summary["pruner"] != "none" and len(summary["objectives"]) == 1
    check_s = _check_cost_s(study, summary) if pruning else 0.0
    train = bookkeeping = checks = 0.0
    per_worker: dict[Any, list[Any]] = {}
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds()
        fit_s = float(t.user_attrs.get("train_s", duration))  # a failed trial: its whole duration was trial work
        trial_checks = check_s * len(t.intermediate_values) if pruning else 0.0
        train += fit_s - trial_checks
        checks += trial_checks
        bookkeeping += duration - fit_s
        per_worker.setdefault(t.user_attrs.get("pid"), []).append(t)
    between = spans = 0.0
    for ts in per_worker.values():
        span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
        spans += span
        between += span - sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ts)
    capacity = workers * wall
    parts = {"pruning_checks": checks, "in_trial_bookkeeping": bookkeeping, "between_trials": between,
             "start_and_end": capacity - spans}
    whole = workers * summary["command_wall_s"]  # the command as a user waits for it: its start, _finish too
    return {"share": 1 - train / capacity, "parts_share": {k: v / capacity for k, v in parts.items()},
            "command_share": 1 - train / whole if whole > 0 else 0.0,
            "check_ms": 1000 * check_s, "train_s": train, "capacity_s": capacity,
            "optuna_share": cmd["outside_trials_share"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24, help="trials per study (default 24)")
    ap.add_argument("--seeds", type=int, default=3, help="sampler seeds per sampler and data set (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per study (default 2)")
    ap.add_argument("--datasets", default="digits,breast_cancer", help="comma-separated built-in data sets")
    ap.add_argument("--keep", type=Path, help="keep the studies in this new directory (default: a temp dir)")
    args = ap.parse_args()
    datasets = args.datasets.split(",")
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"tune: {', '.join(datasets)} x {', '.join(SAMPLERS)} x {args.seeds} seed(s), {args.trials} trials, "
          f"{args.workers} workers each; load average {load_start}")
    t_all = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = args.keep or Path(tmp)
        for seed in range(args.seeds):
            for data in datasets:
                for sampler in SAMPLERS:
                    study = work / f"{data}-{sampler}-{seed}"
                    summary = run_tune(study, [f"data.source={data}", f"seed={seed}"], "--trials", args.trials,
                                       "--workers", args.workers, "--sampler", sampler, "--seed", seed)
                    share = outside_share(study, summary)
                    c = summary["counts"]
                    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
                    best_value = summary["best"]["values"][0]
                    row = {"data": data, "sampler": sampler, "seed": seed, "best_val": summary["best"]["values"][0],
                           "best_test": summary["best"]["test"].get(summary["metric"]), "metric": summary["metric"],
                           "pruned_share": c["PRUNED"] / c["total"], "failed": c["FAIL"],
                           # finer than the best when the best saturates (a small validation split): how good
                           # the completed trials were on average, and how soon the best value was first reached
                           "complete_val_mean": statistics.mean(t["values"][0] for t in done),
                           "trials_to_best": 1 + min(t["number"] for t in done if t["values"][0] == best_value),
                           "wall_s": summary["command"]["wall_s"], "command_wall_s": summary["command_wall_s"],
                           "outside": share, "best_params": summary["best"]["params"]}
                    results.append(row)
                    print(f"  {data:<14} {sampler:<6} seed {seed}: best val {row['best_val']:.4f} (test "
                          f"{row['best_test']:.4f}), {c['PRUNED']}/{c['total']} pruned, {row['wall_s']:.0f} s; "
                          f"outside training {100 * share['share']:.1f}% (summary.json: "
                          f"{100 * share['optuna_share']:.1f}%)", flush=True)
    total_s = time.perf_counter() - t_all

    per: dict[str, dict[str, Any]] = {}
    for data in datasets:
        per[data] = {s: spread([r["best_val"] for r in results if r["data"] == data and r["sampler"] == s])
                     for s in SAMPLERS}
        per[data]["tpe_ge_random"] = per[data]["tpe"]["mean"] >= per[data]["random"]["mean"]
        for s in SAMPLERS:
            mine = [r for r in results if r["data"] == data and r["sampler"] == s]
            per[data][s]["complete_val_mean"] = statistics.mean(r["complete_val_mean"] for r in mine)
            per[data][s]["trials_to_best_mean"] = statistics.mean(r["trials_to_best"] for r in mine)
            v = per[data][s]
            print(f"{data:<14} {s:<6}: best val mean {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f}, "
                  f"std {v['std']:.4f}, {v['n']} seeds); completed trials' val {v['complete_val_mean']:.4f}, "
                  f"best first reached at trial {v['trials_to_best_mean']:.1f} on average")
        print(f"{data:<14} goal TPE >= random: {'PASS' if per[data]['tpe_ge_random'] else 'FAIL'} "
              f"({per[data]['tpe']['mean'] - per[data]['random']['mean']:+.4f})")
    capacity = sum(r["outside"]["capacity_s"] for r in results)
    pooled = 1 - sum(r["outside"]["train_s"] for r in results) / capacity
    parts = {k: sum(r["outside"]["parts_share"][k] * r["outside"]["capacity_s"] for r in results) / capacity
             for k in results[0]["outside"]["parts_share"]}
    optuna_pooled = sum(r["outside"]["optuna_share"] * r["outside"]["capacity_s"] for r in results) / capacity
    whole = sum(r["command_wall_s"] * r["outside"]["capacity_s"] / r["wall_s"] for r in results)
    command_pooled = 1 - sum(r["outside"]["train_s"] for r in results) / whole
    by_data = {d: 1 - sum(r["outside"]["train_s"] for r in results if r["data"] == d)
               / sum(r["outside"]["capacity_s"] for r in results if r["data"] == d) for d in datasets}
    share_pass = pooled <= GOAL_OUTSIDE_SHARE
    print("outside training, pooled: " + f"{100 * pooled:.1f}% (" + ", ".join(
        f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in parts.items()) + "); per data set: " + ", ".join(
        f"{d} {100 * v:.1f}%" for d, v in by_data.items()) + f"; summary.json's figure {100 * optuna_pooled:.1f}%; "
          f"of the whole commands {100 * command_pooled:.1f}%")
    print(f"goal outside share <= {100 * GOAL_OUTSIDE_SHARE:.0f}%: {'PASS' if share_pass else 'FAIL'}; "
          f"total {total_s:.0f} s")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_start is not None and max(load_start, load_end or 0) > (os.cpu_count() or 1):
        print(f"warning: load average {load_start:.1f} -> {load_end:.1f} on {os.cpu_count()} cores: other jobs "
              "stretch the wall times; rerun on a quiet machine")
    print(json.dumps({
        "benchmark": "tune", "trials": args.trials, "seeds": args.seeds, "workers": args.workers,
        "datasets": datasets, "samplers": list(SAMPLERS), "best_val": per,
        "tpe_ge_random": {d: per[d]["tpe_ge_random"] for d in datasets},
        "outside_share": pooled, "outside_parts_share": parts, "outside_share_by_data": by_data,
        "outside_share_summary_json": optuna_pooled, "outside_share_whole_command": command_pooled,
        "goal_outside_share": GOAL_OUTSIDE_SHARE,
        "pass": {"tpe_ge_random": all(per[d]["tpe_ge_random"] for d in datasets), "outside_share": share_pass},
        "total_s": total_s, "studies": results,
        "env": {**environment(None), "load_avg_1m_start": load_start, "load_avg_1m_end": load_end},
    }))


if __name__ == "__main__":
    main()
