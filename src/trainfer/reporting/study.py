"""`trainfer report STUDY_DIR`: a tuning study as a self-contained report.html.

Everything comes from the study's summary.json (`trainfer tune` writes every trial into it), so the
report needs neither Optuna nor the study database: it runs wherever the `report` extra is installed.
The same section goes into the run report of the study's best run (STUDY_DIR/best).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from trainfer._atomic import write_text
from trainfer.errors import RunError
from trainfer.reporting import study_charts
from trainfer.reporting.fmt import duration_ms, seconds, si
from trainfer.reporting.page import STYLE, figure

# What makes a summary.json a study's (a run's summary has none of these).
STUDY_KEYS = ("trials", "objectives", "directions", "counts", "best", "pareto")
# tuning.results.importances judges nothing below this many complete trials (reporting may not import tuning).
MIN_TRIALS_FOR_IMPORTANCE = 4
TOP = 10


def _study_summary(file: Path) -> dict[str, Any] | None:
    """summary.json's content when it is a study's, else None (absent, a run's, or unreadable)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and all(k in data for k in STUDY_KEYS) else None


def is_study_dir(path: Path) -> bool:
    """`trainfer tune` wrote tune.json here, or this is a named study's folder (STUDY_DIR/studies/NAME)."""
    return (path / "tune.json").is_file() or _study_summary(path / "summary.json") is not None


def study_of_run(run: Path) -> dict[str, Any] | None:
    """The summary of the study a run came from: STUDY_DIR/best carries trial.json, its parent the summary;
    a copy elsewhere (`trainfer run` puts one in OUT/run) names the study in trial.json, relative to itself."""
    marker = run / "trial.json"
    if not marker.is_file():
        return None
    try:
        where = json.loads(marker.read_text()).get("study")
    except (OSError, ValueError, AttributeError):
        where = None
    study = (run / where) if isinstance(where, str) else run.resolve().parent
    return _study_summary(study.resolve() / "summary.json")


def load(study_dir: Path) -> dict[str, Any]:
    file = study_dir / "summary.json"
    summary = _study_summary(file)
    if summary is not None:
        return summary
    if file.is_file():
        raise RunError(f"{file} is not a study summary that can be read (damaged, or from another tool)",
                       hint=f"run the same `trainfer tune ... --out {study_dir}` command again: it rewrites it")
    named = sorted(p.parent for p in study_dir.glob("studies/*/summary.json"))
    if named:
        hint = "its named studies have one: " + ", ".join(f"trainfer report {p}" for p in named)
    else:
        hint = f"`trainfer tune` writes it when a trial completes; run it again with --out {study_dir}"
    raise RunError(f"{study_dir} has no summary.json: no trial of its study has finished", hint=hint)


def report(study_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write report.html for a tuning study (into it, or into ``out``); returns its path.

    Example: ``trainfer.tune("examples/digits.yaml", out="studies/d"); trainfer.report("studies/d")``.
    """
    study_dir = Path(study_dir)
    summary = load(study_dir)
    out = Path(out) if out else study_dir
    title = (f"study {summary.get('study', 'default')} · {summary['counts']['total']} trials · best validation "
             f"{summary['metric']} {summary['best']['values'][0]:.4f}")
    page = _PAGE.format(style=STYLE, title=html.escape(title), section=section(summary))
    write_text(out / "report.html", page)
    return {"report": out / "report.html"}


def section(summary: dict[str, Any]) -> str:
    """The study as HTML: what was searched, the counts, the charts, the top trials and the failures."""
    metric, objectives = summary["metric"], summary["objectives"]
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    parts = [_settings(summary), _counts(summary["counts"])]
    parts.append(figure("Optimization history", study_charts.history(summary), "study-history"))
    if summary.get("importances"):
        method = summary.get("importance_method") or "unknown method"
        parts.append(figure(f"Parameter importances ({method})",
                            study_charts.importances(summary["importances"], method, metric), "study-importances"))
    elif len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        parts.append(f'<p class="note" id="study-importances-note">Parameter importances: too few trials. '
                     f"They need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials and this study has "
                     f"{len(done)}; the same <code>trainfer tune</code> command continues it.</p>")
    else:
        parts.append('<p class="note" id="study-importances-note">Parameter importances could not be computed '
                     "for these trials (neither fANOVA nor PED-ANOVA could judge them).</p>")
    if len(objectives) > 1:
        parts.append(figure(f"Pareto front: validation {metric} against {_objective(objectives[1], metric)}",
                            study_charts.pareto(summary), "study-pareto"))
    parts.append(_top(summary))
    parts.append(_failures(summary["trials"]))
    return '<section id="study">\n' + "\n".join(p for p in parts if p) + "\n</section>"


def _settings(summary: dict[str, Any]) -> str:
    best, metric = summary["best"], summary["metric"]
    test = (best.get("test") or {}).get(metric)
    cmd = summary.get("command") or {}
    items = [
        "objectives: " + " and ".join(f"{html.escape(_objective(o, metric))} ({html.escape(d)})"
                                      for o, d in zip(summary["objectives"], summary["directions"], strict=False)),
        f"sampler {html.escape(str(summary.get('sampler')))}, pruner {html.escape(str(summary.get('pruner')))}"
        + (" (not used: trials with two objectives are not pruned)" if len(summary["objectives"]) > 1 else "")
        + ", "
        f"storage <code>{html.escape(str(summary.get('storage')))}</code>",
        f"best.yaml: trial {best['number']} ({html.escape(str(summary.get('pick') or 'most-accurate'))}), "
        f"validation {metric} {best['values'][0]:.4f}"
        + (f", test {metric} {test:.4f} (scored once, on best/)" if test is not None else ""),
        "search space: " + ", ".join(f"<code>{html.escape(k)}</code> {html.escape(json.dumps(v))}"
                                     for k, v in summary.get("space", {}).items()),
    ]
    if cmd:
        items.append(f"last command: {cmd.get('trials')} trials on {cmd.get('workers')} worker(s) in "
                     f"{seconds(cmd.get('wall_s'))}, {100 * (cmd.get('outside_trials_share') or 0):.1f}% of it "
                     "outside trials")
    return '<ul id="study-settings">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _counts(counts: dict[str, int]) -> str:
    states = [("total", "trials"), ("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"),
              ("RUNNING", "running"), ("WAITING", "waiting")]
    head = "".join(f"<th>{label}</th>" for _, label in states)
    cells = "".join(f'<td class="r" data-state="{key}">{counts.get(key, 0)}</td>' for key, _ in states)
    return f'<table id="study-counts"><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>'


def _top(summary: dict[str, Any]) -> str:
    """The best complete trials (the Pareto front first when there are two objectives), as the terminal shows."""
    metric, objectives = summary["metric"], summary["objectives"]
    maximize = summary["directions"][0] == "maximize"
    front = {t["number"] for t in summary["pareto"]}
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    rows = sorted(done, key=lambda t: (t["number"] not in front if front else False,
                                       -t["values"][0] if maximize else t["values"][0], t["number"]))[:TOP]
    keys = list(summary.get("space", {}))
    latency = "latency" in objectives
    head = ["trial", f"val {metric}", "FLOPs", *(["p50"] if latency else []), "parameters", "epochs", "time", *keys]
    body = []
    for t in rows:
        marks = ("★" if t["number"] == summary["best"]["number"] else "") + ("◆" if t["number"] in front else "")
        cells = [f"{t['values'][0]:.4f}", si(t.get("flops"), "FLOP"),
                 *([duration_ms(t.get("latency_ms"))] if latency else []),
                 "—" if t.get("params_count") is None else f"{t['params_count']:,}",
                 str(t.get("epochs_run") or "—"), seconds(t.get("duration_s")),
                 *[_param(t["params"].get(k)) for k in keys]]
        body.append(f'<tr data-trial="{t["number"]}"><td>{t["number"]} {marks}</td>'
                    + "".join(f'<td class="r">{html.escape(c)}</td>' for c in cells) + "</tr>")
    legend = "★ best.yaml" + ("; ◆ Pareto front" if front else "")
    return (f"<h3>Top {len(rows)} of {len(done)} complete trials ({legend})</h3>"
            f'<div class="wide"><table id="study-top"><thead><tr>'
            f'{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _failures(trials: list[dict[str, Any]]) -> str:
    failed = [t for t in trials if t["state"] == "FAIL"]
    if not failed:
        return ""
    rows = "".join(f'<tr data-trial="{t["number"]}"><td>{t["number"]}</td>'
                   f"<td>{html.escape(t.get('fail_reason') or 'no reason recorded (the worker died)')}</td></tr>"
                   for t in failed[:TOP])
    more = f"<p>… and {len(failed) - TOP} more.</p>" if len(failed) > TOP else ""
    return (f"<h3>Failed trials ({len(failed)})</h3><table id=\"study-failures\"><thead><tr><th>trial</th>"
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>{more}")


def _objective(name: str, metric: str) -> str:
    """The first objective is named 'accuracy' whatever the task: it is the validation metric (rmse too)."""
    return f"validation {metric}" if name == "accuracy" else {"flops": "forward FLOPs per prediction",
                                                            "latency": "ONNX p50 latency at batch 1"}.get(name, name)


def _param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else json.dumps(value).replace(" ", "")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trainfer study report: {title}</title>
{style}</head>
<body>
<h1>Tuning study</h1>
<p class="sub">{title}</p>
{section}
</body></html>
"""
