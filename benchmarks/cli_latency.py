"""What a user waits for: each CLI verb's wall time on digits, as fresh processes, against a git revision.

Verbs: `--help`, `train` (its time outside the training loop too, from `timings.train_loop_s`),
`evaluate`, `export`, `predict` on 100 rows, and with `--optimize` an `optimize --variant int8-dynamic`.
Every command runs as its own subprocess (as a user runs it), repeated, and the trees take turns
(A B, B A, ...) within each verb so a busy shared machine slows both alike (MEASURE.md). Wall time and the
child's CPU time (user + sys, steadier than wall time when other jobs compete for the cores) are kept.

    .venv/bin/python benchmarks/cli_latency.py                        # this tree only
    .venv/bin/python benchmarks/cli_latency.py --baseline main        # and main's, in the same run
    .venv/bin/python benchmarks/cli_latency.py --quick --baseline HEAD~3

`--baseline REV` checks REV out in a temporary `git worktree` and runs the same commands from it with
PYTHONPATH pointing at its src/ (same interpreter and packages). The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import ROOT, environment

GOALS_S = {"export": 2.0, "train_outside_loop": 2.0}  # issue 10.33: wall seconds, medians


class Tree:
    """One source tree (this checkout, or a worktree of the baseline revision) and its prepared run/bundle."""

    def __init__(self, name: str, src: Path, work: Path, threads: int) -> None:
        self.name, self.src, self.work = name, src, work
        self.env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads), "COLUMNS": "100"}
        self.env.pop("PYTHONSTARTUP", None)
        self.count = 0

    def fresh(self, suffix: str) -> Path:
        """A path that does not exist yet, for one command's output."""
        self.count += 1
        return self.work / f"out-{self.count}{suffix}"

    def cli(self, *args: object) -> tuple[float, float, str]:
        """Run ``trainfer ARGS``; returns (wall s, child CPU s, stdout). Fails loudly on a non-zero exit."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "trainfer.cli", *map(str, args)], env=self.env,
                              cwd=self.work, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"[{self.name}] trainfer {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, proc.stdout


def verbs(epochs: int, with_optimize: bool) -> dict[str, Callable[[Tree], tuple[float, float, dict[str, Any]]]]:
    """name -> a function running that verb once in a tree; returns (wall s, cpu s, extra figures)."""

    def help_(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, _ = t.cli("--help")
        return wall, cpu, {}

    def train(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, out = t.cli("train", "--data", "digits", "--epochs", epochs, "--out", t.fresh("-run"),
                               "--quiet", "--json")
        loop_s = float(json.loads(out.strip().splitlines()[-1])["timings"]["train_loop_s"])
        return wall, cpu, {"loop_s": loop_s, "outside_loop_s": wall - loop_s}

    def evaluate(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, _ = t.cli("evaluate", t.work / "run", "--json")
        return wall, cpu, {}

    def export(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, _ = t.cli("export", t.work / "run", "--out", t.fresh("-bundle"))
        return wall, cpu, {}

    def predict(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, _ = t.cli("predict", t.work / "bundle", t.work / "rows.csv", "--out", t.fresh(".csv"))
        return wall, cpu, {}

    def optimize(t: Tree) -> tuple[float, float, dict[str, Any]]:
        wall, cpu, _ = t.cli("optimize", t.work / "run", "--out", t.fresh("-opt"), "--variant", "int8-dynamic")
        return wall, cpu, {}

    table = {"help": help_, "train": train, "evaluate": evaluate, "export": export, "predict": predict}
    if with_optimize:
        table["optimize"] = optimize
    return table


def prepare(tree: Tree, epochs: int) -> None:
    """The run, bundle and input rows that evaluate/export/predict work on (not timed)."""
    tree.cli("train", "--data", "digits", "--epochs", epochs, "--out", tree.work / "run", "--quiet")
    tree.cli("export", tree.work / "run", "--out", tree.work / "bundle")
    rows = tree.work / "rows.csv"
    code = ("import sys; from trainfer.data import load_dataset; from trainfer.config import DataConfig; "
            "load_dataset(DataConfig(source='digits')).X.head(100).to_csv(sys.argv[1], index=False)")
    subprocess.run([sys.executable, "-c", code, str(rows)], env=tree.env, check=True)


def baseline_worktree(rev: str, stack: ExitStack) -> Path:
    """A detached worktree of ``rev`` in a temporary directory, removed at exit."""
    where = Path(tempfile.mkdtemp(prefix="cli-latency-base-"))
    shutil.rmtree(where)
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(where), rev], cwd=ROOT, check=True)
    stack.callback(lambda: subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT,
                                          capture_output=True))
    return where


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="REV", help="git revision to compare against (e.g. main, HEAD~3)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each verb per tree (default 5, quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 10, quick 3)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every command (default 1)")
    ap.add_argument("--optimize", action="store_true", help="also time `optimize --variant int8-dynamic`")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and epochs, for smoke runs")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    epochs = args.epochs or (3 if args.quick else 10)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cli-latency-")))
        trees = [Tree("current", ROOT / "src", work / "current", args.threads)]
        if args.baseline:
            base = baseline_worktree(args.baseline, stack)
            trees.append(Tree(f"baseline {args.baseline}", base / "src", work / "baseline", args.threads))
        for tree in trees:
            tree.work.mkdir()
            prepare(tree, epochs)
        table = verbs(epochs, args.optimize)
        print(f"cli_latency: digits, {epochs} epochs, {args.threads} thread(s), {repeats} repeats, trees: "
              + ", ".join(t.name for t in trees))
        raw: dict[str, dict[str, list[dict[str, float]]]] = {t.name: {v: [] for v in table} for t in trees}
        for r in range(repeats):
            for verb, fn in table.items():
                # Alternate which tree goes first, so drift on a shared machine favours neither.
                for tree in (trees if r % 2 == 0 else trees[::-1]):
                    wall, cpu, extra = fn(tree)
                    raw[tree.name][verb].append({"wall_s": wall, "cpu_s": cpu, **extra})
            print(f"  repeat {r + 1}/{repeats} done")

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_verb in raw.items():
        summary[name] = {}
        for verb, samples in per_verb.items():
            keys = sorted({k for s in samples for k in s})
            summary[name][verb] = {f"{k}_median": median([s[k] for s in samples]) for k in keys}
    current = summary["current"]
    header = f"{'verb':<10}" + "".join(f"{t.name + ' wall s':>26}{'cpu s':>9}" for t in trees)
    print(header)
    for verb in table:
        line = f"{verb:<10}"
        for t in trees:
            s = summary[t.name][verb]
            line += f"{s['wall_s_median']:>26.2f}{s['cpu_s_median']:>9.2f}"
        print(line)
    for t in trees:
        s = summary[t.name]["train"]
        print(f"train ({t.name}): loop {s['loop_s_median']:.2f} s, outside the loop {s['outside_loop_s_median']:.2f} s")
    figures = {"export": current["export"]["wall_s_median"],
               "train_outside_loop": current["train"]["outside_loop_s_median"]}
    passed = {k: figures[k] <= GOALS_S[k] for k in GOALS_S}
    for k, v in figures.items():
        print(f"goal {k} <= {GOALS_S[k]:.0f} s: {v:.2f} s {'PASS' if passed[k] else 'FAIL'}")
    ratios = {}
    if len(trees) == 2:
        base = summary[trees[1].name]
        # Paired per repeat: each pair ran back to back, so the ratio is steadier than a ratio of medians.
        for verb in table:
            pairs = zip(raw["current"][verb], raw[trees[1].name][verb], strict=True)
            ratios[verb] = median([a["wall_s"] / b["wall_s"] for a, b in pairs])
        print("current / baseline wall time (median of paired ratios): "
              + ", ".join(f"{v} {ratios[v]:.2f}" for v in table))
        ratios["train_outside_loop"] = (current["train"]["outside_loop_s_median"]
                                        / base["train"]["outside_loop_s_median"])
    if load_start is not None and load_start > (os.cpu_count() or 1):
        print(f"warning: load average {load_start:.1f} on {os.cpu_count()} cores at start: wall times are inflated;"
              " compare the paired ratios and cpu_s, or rerun on a quiet machine")
    print(json.dumps({
        "benchmark": "cli_latency", "dataset": "digits", "epochs": epochs, "repeats": repeats,
        "threads": args.threads, "baseline_rev": args.baseline, "summary": summary, "ratio_current_vs_baseline":
        ratios, "goals_s": GOALS_S, "figures_s": figures, "pass": passed,
        "env": {**environment(args.threads), "load_avg_1m_start": load_start}, "raw": raw,
    }))


if __name__ == "__main__":
    main()
