"""The audit verb: a membership-inference attack on a finished run (trainfer.auditing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer.cli._common import JsonFlag, QuietFlag, _console, _emit, _verb, app


def _check_references(value: int) -> int:
    if not 2 <= value <= 64:
        raise typer.BadParameter(f"must be 2 to 64 reference models, not {value} (the calibrated attack needs "
                                 "at least 2: each row is scored by the references that never trained on it)")
    return value


def _check_resamples(value: int) -> int:
    if value < 100:
        raise typer.BadParameter(f"must be at least 100 bootstrap resamples, not {value}")
    return value


@app.command()
@_verb("train", kept=lambda args: f"nothing was written: {Path(args['run']) / 'audit.json'} is written whole or "
                                  "not at all (reference models live in a temporary directory)")
def audit(
    run: Annotated[Path, typer.Argument(help="A finished run directory (the --out of `trainfer train`).")],
    references: Annotated[int, typer.Option(
        help="Reference models for the calibrated attack, each trained by the run's recipe (2 to 64).",
        callback=_check_references)] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the references' rows and weights and for the bootstrap.",
                                      min=0)] = 0,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.",
                                           callback=_check_resamples)] = 1000,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Attack a run's model to measure what it leaks about its training rows; write RUN/audit.json.

    Members are the run's train split, non-members its test split. Two attacks: the per-example loss, and
    a calibrated one (offline LiRA) whose per-example difficulty comes from reference models trained by the
    same loop on rows they are never used to score. Reports AUC and TPR at 1% and 0.1% FPR with bootstrap
    intervals, and the empirical epsilon lower bound they imply (the DP guarantee can only be above it).
    AUC 0.5 means chance: the attacker tells members from non-members no better than a coin; 1.0, always.

    Example: trainfer audit runs/digits --references 4
    """
    from trainfer.auditing import audit as audit_fn

    def progress(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    result = audit_fn(run, references=references, seed=seed, resamples=resamples, progress=progress)
    if as_json:
        _emit(result, True, "")
        return
    table, lines = _human(result)
    console = _console()
    console.print(table)
    console.print("\n".join(lines), markup=False)


def _human(r: dict[str, Any]) -> tuple[Any, list[str]]:
    from rich.table import Table

    table = Table(title=f"membership inference: {r['members']} members (train split) vs {r['non_members']} "
                        "non-members (test split)", title_justify="left")
    for col in ("attack", "AUC [95% CI]", "TPR at 1% FPR", "TPR at 0.1% FPR"):
        table.add_column(col)
    for name, a in r["attacks"].items():
        lo, hi = a["auc_ci95"]
        cells = [name, f"{a['auc']:.3f} [{lo:.3f}, {hi:.3f}]"]
        for t in a["tpr_at_fpr"]:
            cells.append(f"{t['tpr']:.3f} [{t['tpr_ci95'][0]:.3f}, {t['tpr_ci95'][1]:.3f}]" if t["measurable"]
                         else f"not measurable (< {round(1 / t['fpr_target'])} non-members)")
        table.add_row(*cells)
    eps = r["epsilon_lower_bound"]
    eps_line = ("empirical epsilon lower bound: not measurable (too few non-members for 1% FPR)"
                if eps["epsilon"] is None else
                f"empirical epsilon lower bound: {eps['epsilon']:.2f} ({eps['attack']} attack at "
                f"{eps['fpr_target']:.1%} FPR, delta {eps['delta']:.2g}, 95%)")
    dp = (r.get("privacy") or {}).get("epsilon")
    verdict = "leaks membership: an AUC interval excludes 0.5" if r["leaks"] else \
        "no leakage measurable at this sample size (both AUC intervals include 0.5 or lie below it)"
    lines = [eps_line + (f"; DP guarantee epsilon {dp:g}" if isinstance(dp, int | float) else ""), verdict,
             f"written: {Path(r['run']) / 'audit.json'}"]
    return table, lines
