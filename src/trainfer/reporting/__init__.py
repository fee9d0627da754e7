"""`trainfer report RUN`: a self-contained report.html and an infographic.png from bench.json;
`trainfer report STUDY_DIR`: a tuning study's report.html (reporting/study.py)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from trainfer._atomic import write_text, write_with
from trainfer.errors import RunError
from trainfer.reporting import audit, charts, study
from trainfer.reporting.fmt import duration_ms, get, si
from trainfer.reporting.infographic import draw
from trainfer.reporting.ledger import rows
from trainfer.reporting.page import STYLE, figure


def _cell(bench: dict[str, Any], parts: list[Any]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(html.escape(part))
        else:
            key, fmt = part
            value = get(bench, key)
            out.append(f'<span class="num" data-key="{key}" data-value="{html.escape(json.dumps(value))}">'
                       f"{html.escape(fmt(value))}</span>")
    return "".join(out)


def _variant_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Variants to chart: the optimize table when present, plus what bench measured (bundle, torch)."""
    opt = get(bench, "inference.optimize.variants") or []
    measured = [{"name": name, "latency_ms_p50": r["latency_ms_p50"], "latency_ms_p90": r["latency_ms_p90"],
                 "status": "kept"} for name, r in bench["inference"]["variants"].items()]
    return [*opt, *measured]


def report(run: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write report.html and infographic.png for a benchmarked run; returns their paths. For a study dir
    (from `trainfer tune`), report.html alone: the study's history, importances and Pareto front.

    Example: ``trainfer.bench("runs/digits", quick=True); trainfer.report("runs/digits")``.
    """
    run = Path(run)
    if study.is_study_dir(run):
        return study.report(run, out)
    bench_file = run / "bench.json"
    if not bench_file.is_file():
        raise RunError(f"{run} has no bench.json", hint=f"measure it first: trainfer bench {run}")
    bench = json.loads(bench_file.read_text())
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = Path(out) if out else run
    metric = "accuracy" if summary["task"] == "classification" else "rmse"
    bundle_key = bench["inference"]["bundle_key"]
    scored = (f"test {metric} {summary['test'][metric]:.4f}" if "test" in summary  # a tuning trial never saw the
              else f"val {metric} {summary['val'][metric]:.4f} (a tuning trial: not scored on the test split)")  # test
    title = f"{summary['data']['source']} · {bench['inference']['variant']} bundle · {scored}"

    table = "\n".join(f"<tr><th>{html.escape(label)}</th><td>{_cell(bench, tr)}</td><td>{_cell(bench, inf)}</td></tr>"
                      for label, tr, inf in rows(bench, bundle_key))
    variants = _variant_rows(bench)
    figs = [("Training curves", charts.training_curves(history, summary["best_epoch"], metric))]
    figs.append(("Latency per variant", charts.latency_by_variant(variants)))
    if get(bench, "inference.optimize.variants"):
        figs.append(("Accuracy against latency", charts.accuracy_vs_latency(bench["inference"]["optimize"]["variants"],
                                                                            metric)))
    e_method = get(bench, "energy.inference_j_per_prediction.method") or "unknown"
    figs.append(("FLOPs and energy, per sample", charts.phases_side_by_side(
        (bench["training"]["flops_per_sample"], bench["inference"]["flops_per_sample"]),
        (get(bench, "energy.training_j_per_sample.value"), get(bench, "energy.inference_j_per_prediction.value")),
        e_method)))
    manifest = _manifest(bench)
    origin = study.study_of_run(run)  # a study's best run: the study's charts go in too
    page = _PAGE.format(
        style=STYLE, title=html.escape(title), table=table,
        charts="\n".join(figure(c, svg) for c, svg in figs), audit=audit.section(run, summary),
        study=f"<h2>The tuning study this run came from</h2>\n{study.section(origin)}" if origin else "",
        scenarios=_scenarios(bench), provenance=_provenance(bench, summary, manifest),
        env=html.escape(json.dumps(bench["env"], indent=1)),
    )
    write_text(out / "report.html", page)
    write_with(out / "infographic.png", lambda tmp: draw(bench, title, tmp))
    return {"report": out / "report.html", "infographic": out / "infographic.png"}


def _manifest(bench: dict[str, Any]) -> dict[str, Any] | None:
    return bench.get("bundle_manifest")


def _scenarios(bench: dict[str, Any]) -> str:
    out = []
    for name, r in bench["inference"]["variants"].items():
        off = ", ".join(f"batch {o['batch_size']}: {si(o['throughput_per_s'], '/s')} ({o['validity']})"
                        for o in r["offline"])
        srv = r["server"]
        lat = " / ".join(duration_ms(r[f"latency_ms_{q}"]) for q in ("p50", "p90", "p99"))
        out.append(f"<tr><td>{html.escape(name)}</td><td>{lat} ({r['single_stream']['validity']})</td>"
                   f"<td>{html.escape(off)}</td><td>{si(srv['max_qps_within_bound'], 'QPS')} within p99 ≤ "
                   f"{duration_ms(srv['latency_bound_ms_p99'])}</td></tr>")
    return "\n".join(out)


def _provenance(bench: dict[str, Any], summary: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    items = [f"data fingerprint (sha256): <code>{summary['data']['fingerprint']}</code>"]
    if manifest:
        items += [f"{html.escape(n)} sha256: <code>{h}</code>" for n, h in manifest["files"].items()]
        items.append(f"manifest self-hash: <code>{manifest['manifest_sha256']}</code>")
        note = " (a temporary onnx-fp32 export made for the measurement)" if manifest.get("temporary") else ""
        items.append(f"bundle variant: {html.escape(str(manifest['variant']))}{note}")
    items.append(f"git revision: <code>{bench['env'].get('git_revision') or 'n/a'}</code>")
    privacy = "see the ledger's privacy budget row" if summary.get("privacy") else "not trained with DP"
    items.append(f"signatures: not signed (signed bundles come later); privacy budget: {privacy}")
    return "".join(f"<li>{i}</li>" for i in items)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trainfer report: {title}</title>
{style}</head>
<body>
<h1>Training vs Inference</h1>
<p class="sub">{title}</p>
<table id="ledger"><thead><tr><th></th><th>Training</th><th>Inference</th></tr></thead>
<tbody>
{table}
</tbody></table>
<h2>Privacy: membership-inference audit</h2>
{audit}
<h2>Charts</h2>
{charts}
{study}
<h2>MLPerf LoadGen scenarios</h2>
<table id="scenarios"><thead><tr><th>variant</th><th>SingleStream p50 / p90 / p99</th><th>Offline</th>
<th>Server</th></tr></thead><tbody>
{scenarios}
</tbody></table>
<h2>Provenance</h2>
<ul id="provenance">{provenance}</ul>
<h2>Environment</h2>
<pre>{env}</pre>
</body></html>
"""
