"""The report's privacy-audit section: what `trainfer audit` measured (RUN/audit.json), beside the DP guarantee.

Read from the JSON file only: reporting does not import the auditing package (same layer), and a report
never reruns an attack. A run that was not audited says so, with the command that audits it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def load(run: Path) -> dict[str, Any] | None:
    """RUN/audit.json, or None when the run was not audited (or the file is not an audit)."""
    try:
        audit = json.loads((Path(run) / "audit.json").read_text())
    except (OSError, ValueError):
        return None
    return audit if isinstance(audit, dict) and "attacks" in audit else None


def line(audit: dict[str, Any]) -> str:
    """"membership-inference AUC 0.61 [0.58, 0.65] (loss) / 0.64 [0.60, 0.67] (calibrated)"."""
    parts = []
    for name, a in audit["attacks"].items():
        lo, hi = a["auc_ci95"]
        parts.append(f"{a['auc']:.2f} [{lo:.2f}, {hi:.2f}] ({name})")
    return "membership-inference AUC " + " / ".join(parts)


def section(run: Path, summary: dict[str, Any]) -> str:
    """HTML for the report: a table per attack (AUC, TPR at low FPR, with 95% intervals) and the ε lines."""
    audit = load(run)
    dp = _dp(summary)
    if audit is None:
        return (f'<p id="audit">{html.escape(dp)}. Not audited: <code>trainfer audit {html.escape(str(run))}</code> '
                "attacks the model to measure what it leaks about its training rows.</p>")
    rows = []
    for name, a in audit["attacks"].items():
        lo, hi = a["auc_ci95"]
        cells = [f'<td class="r" data-audit="attacks.{name}.auc">{a["auc"]:.3f} [{lo:.3f}, {hi:.3f}]</td>']
        for t in a["tpr_at_fpr"]:
            if t["measurable"]:
                tlo, thi = t["tpr_ci95"]
                cells.append(f'<td class="r">{t["tpr"]:.3f} [{tlo:.3f}, {thi:.3f}]</td>')
            else:
                cells.append(f"<td>not measurable: {html.escape(t['why'])}</td>")
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    eps = audit["epsilon_lower_bound"]
    measured = ("empirical ε lower bound: not measurable (too few non-members for 1% FPR)" if eps["epsilon"] is None
                else f"empirical ε lower bound {eps['epsilon']:.2f} ({eps['attack']} attack at {eps['fpr_target']:.1%} "
                     f"FPR, δ {eps['delta']:.2g}, {eps['confidence']:.0%} confidence)")
    verdict = ("an AUC interval excludes 0.5: the model measurably leaks membership" if audit["leaks"] else
               "no leakage measurable at this sample size")
    return (f'<p id="audit-line" class="note">{html.escape(line(audit))}: {html.escape(verdict)}</p>\n'
            f'<table id="audit"><thead><tr><th>attack ({audit["members"]} members, {audit["non_members"]} '
            "non-members)</th><th>AUC [95% CI]</th><th>TPR at 1% FPR</th><th>TPR at 0.1% FPR</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>\n"
            f"<p>{html.escape(measured)}; {html.escape(dp)}. Members: the train split; non-members: the test split; "
            f"calibrated = offline LiRA with {audit['references']['count']} reference models.</p>")


def _dp(summary: dict[str, Any]) -> str:
    privacy = summary.get("privacy")
    if isinstance(privacy, dict) and isinstance(privacy.get("epsilon"), int | float):
        delta = privacy.get("delta")
        return f"DP guarantee ε = {privacy['epsilon']:.2f}" + (f", δ = {delta:.2g}" if delta else "")
    return "not trained with DP (no guarantee)"
