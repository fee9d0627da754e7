"""Issue 12, acceptance 3: `trainfer audit` on a deliberately overfit run and on an ε=3 DP run of the same model.

Runs, as a user would and each in its own process:
  trainfer train --data digits --model mlp --epochs E --out OVERFIT --seed 0 --set ...   (no regularization)
  trainfer train ... the same model and split ... --dp-epsilon 3 --out DP                 (DP-SGD, Opacus)
  trainfer audit RUN --references N --json                                                 for both runs
The overfit run: a wide MLP (one layer of 512) without dropout, BatchNorm, weight decay, clipping or early
stopping, on a small train split (15% of digits: ~270 members) against a large test split (45%: ~808
non-members). The DP run has the same model, data and split (the same seed gives the same split), its own
epoch count (DP-SGD is slower per epoch and needs fewer passes to spend its budget).
Goals: the overfit run's calibrated-attack AUC interval excludes 0.5 (lower end > 0.5); the DP run's interval
includes 0.5, or lies below the overfit run's (its upper end under the overfit run's lower end).

Until DP training is in this checkout (no `--dp-epsilon` in `trainfer train --help`), the DP case is reported
as not run, and the benchmark as incomplete: it does not pass without it.

    .venv/bin/python benchmarks/audit.py            # ~1 min at 1 thread on 2 busy cores (DP adds 3-4x per epoch)
    .venv/bin/python benchmarks/audit.py --quick    # 2 references, fewer epochs

The last line printed is one JSON record.
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

from _common import ROOT, environment

SPLIT = ["data.test_fraction=0.45", "data.val_fraction=0.4"]
MODEL = ["model.hidden=[512]", "model.dropout=0", "model.batchnorm=false"]
OVERFIT = [*SPLIT, *MODEL, "train.weight_decay=0", "train.patience=null", "train.grad_clip=null"]
DP = OVERFIT  # the same recipe; only --dp-epsilon and the epoch count differ (DP clips per sample itself)


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trainfer.cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if proc.returncode != 0:
        raise SystemExit(f"trainfer exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def train(out: Path, epochs: int, overrides: list[str], *extra: object) -> tuple[dict[str, Any], float]:
    sets = [a for o in overrides for a in ("--set", o)]
    t0 = time.perf_counter()
    cli("train", "--data", "digits", "--model", "mlp", "--epochs", epochs, "--seed", 0, "--out", out, "--quiet",
        *sets, *extra)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - t0


def audit(run: Path, references: int) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = cli("audit", run, "--references", references, "--json", "--quiet")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def has_dp() -> bool:
    return "--dp-epsilon" in cli("train", "--help").stdout


def row(name: str, summary: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"run": name, "test_accuracy": summary["test"]["accuracy"],
                           "train_accuracy": summary["train"]["accuracy"], "dp": summary.get("privacy"),
                           "members": a["members"], "non_members": a["non_members"],
                           "epsilon_lower_bound": a["epsilon_lower_bound"]["epsilon"], "line": a["line"]}
    for attack, r in a["attacks"].items():
        at1 = r["tpr_at_fpr"][0]
        out[attack] = {"auc": r["auc"], "auc_ci95": r["auc_ci95"],
                       "tpr_at_1pct_fpr": at1["tpr"] if at1["measurable"] else None,
                       "tpr_at_1pct_fpr_ci95": at1.get("tpr_ci95")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 references and fewer epochs")
    ap.add_argument("--references", type=int, help="reference models per audit (default 4; --quick: 2)")
    ap.add_argument("--epochs", type=int, help="overfit run's epochs (default 100; --quick: 40)")
    ap.add_argument("--dp-epochs", type=int, help="DP run's epochs (default 30; --quick: 15)")
    ap.add_argument("--dp-epsilon", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1, help="train.threads for every training, references too "
                    "(default 1: on a busy 2-core machine more threads made a 2 s run take minutes)")
    ap.add_argument("--keep", type=Path, help="keep the runs in this new directory")
    args = ap.parse_args()
    refs = args.references or (2 if args.quick else 4)
    epochs = args.epochs or (40 if args.quick else 100)
    dp_epochs = args.dp_epochs or (15 if args.quick else 30)
    dp_available = has_dp()
    threads = [f"train.threads={args.threads}"]
    print(f"audit: digits MLP [512], 15% train / 45% test split; overfit {epochs} epochs; DP eps={args.dp_epsilon:g} "
          f"{dp_epochs} epochs{'' if dp_available else ' (not available in this checkout: skipped)'}; "
          f"{refs} references per audit", flush=True)
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = args.keep or Path(tmp)
        summary, seconds["train_overfit_s"] = train(work / "overfit", epochs, OVERFIT + threads)
        result, seconds["audit_overfit_s"] = audit(work / "overfit", refs)
        rows.append(row("overfit", summary, result))
        if dp_available:
            summary, seconds["train_dp_s"] = train(work / "dp", dp_epochs, DP + threads,
                                                   "--dp-epsilon", args.dp_epsilon)
            result, seconds["audit_dp_s"] = audit(work / "dp", refs)
            rows.append(row(f"dp-eps{args.dp_epsilon:g}", summary, result))
    print(f"{'run':<10} {'test acc':>8} {'loss AUC [95% CI]':>22} {'calibrated AUC [95% CI]':>24} "
          f"{'TPR@1%FPR (cal.)':>17} {'eps lower':>9}")
    for r in rows:
        def cell(a: dict[str, Any]) -> str:
            return f"{a['auc']:.3f} [{a['auc_ci95'][0]:.3f}, {a['auc_ci95'][1]:.3f}]"
        tpr = r["calibrated"]["tpr_at_1pct_fpr"]
        eps = r["epsilon_lower_bound"]
        print(f"{r['run']:<10} {r['test_accuracy']:>8.4f} {cell(r['loss']):>22} {cell(r['calibrated']):>24} "
              f"{'n/a' if tpr is None else f'{tpr:.3f}':>17} {'n/a' if eps is None else f'{eps:.2f}':>9}")
    over = rows[0]["calibrated"]
    goals: dict[str, bool | None] = {"overfit_auc_interval_excludes_0.5": over["auc_ci95"][0] > 0.5}
    if dp_available:
        dp = rows[1]["calibrated"]
        goals["dp_auc_interval_includes_0.5_or_below_overfit"] = bool(
            dp["auc_ci95"][0] <= 0.5 <= dp["auc_ci95"][1] or dp["auc_ci95"][1] < over["auc_ci95"][0])
    else:
        goals["dp_auc_interval_includes_0.5_or_below_overfit"] = None
    for key, ok in goals.items():
        print(f"goal {key}: {'not run (no DP training in this checkout)' if ok is None else 'PASS' if ok else 'FAIL'}")
    print(json.dumps({
        "benchmark": "audit", "data": "digits", "split": SPLIT, "model": MODEL, "overfit_overrides": OVERFIT,
        "dp_overrides": DP, "epochs": epochs, "dp_epochs": dp_epochs, "dp_epsilon": args.dp_epsilon,
        "references": refs, "threads": args.threads, "dp_available": dp_available, "runs": rows, "goals": goals,
        "passed": all(v is True for v in goals.values()), "complete": dp_available, **seconds,
        "env": environment(None),
    }, default=str))


if __name__ == "__main__":
    main()
