"""Terminal tables (rich) for the optimize record and bench.json, shared by the CLI verbs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainfer.reporting.fmt import count, duration_ms, get, seconds, si

STATUS = {"kept": "✅ kept", "over_budget": "❎ over budget", "failed": "❌ failed", "skipped": "➖ skipped"}


# The optimize table's columns: (header, cell from a row and the record, in the default narrow table).
# Narrow fits 100 terminal columns with the longest variant name; --wide adds size, accuracies, p90, params, FLOPs.
def _columns(record: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str], bool]]:
    m = record["metric"]
    short = {"accuracy": "acc"}.get(m, m)

    def num(key: str, fmt: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        return lambda r: "—" if r.get(key) is None else format(r[key] * scale, fmt)

    return [
        ("size MB", num("size_mb", ".3f"), False),
        (f"val {short}", num(f"val_{m}", ".4f"), False),
        (f"test {short}", num(f"test_{m}", ".4f"), True),
        ("val drop", num("val_drop", "+.2f"), True),
        ("95% bound", num("val_drop_bound", "+.2f"), True),
        ("p50", lambda r: duration_ms(r.get("latency_ms_p50")), True),
        ("p90", lambda r: duration_ms(r.get("latency_ms_p90")), False),
        ("vs torch", lambda r: "—" if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x", True),
        ("params", num("params", ",.0f"), False),
        ("MFLOPs", num("flops", ".3f", 1e-6), False),
    ]


def optimize_table(record: dict[str, Any], wide: bool = False) -> Any:
    """The variants table as a rich Table (also used by `trainfer run`): by default the columns that decide
    (fits 100 terminal columns); ``wide`` adds size, validation accuracy, p90, parameters and FLOPs."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"optimize: budget {record['max_accuracy_drop']} {record['drop_unit']}, "
                        f"{count(record['threads'], 'thread')}; ★ chosen",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    # names are what people search the table for: never cut them
    table.add_column("variant", no_wrap=True, min_width=max(len(r["name"]) for r in record["variants"]))
    table.add_column("status", no_wrap=True)
    columns = [(head, cell) for head, cell, narrow in _columns(record) if wide or narrow]
    for head, _ in columns:
        table.add_column(head, justify="right", no_wrap=True)
    for r in record["variants"]:
        status = STATUS.get(r["status"], r["status"]) + (" ★" if r.get("chosen") else "")
        table.add_row(r["name"], status, *[cell(r) for _, cell in columns])
    return table


def bench_table(record: dict[str, Any]) -> Any:
    """The headline figures of bench.json as a rich Table (also used by `trainfer run`)."""
    from rich.table import Table

    t = Table(title=f"trainfer bench ({record['mode']}, {count(record['inference']['threads'], 'thread')})")
    t.add_column("")
    t.add_column("training", style="dark_orange3")
    for name in record["inference"]["variants"]:
        t.add_column(name, style="dodger_blue2")
    vs = list(record["inference"]["variants"].values())
    tr = record.get("training") or {}
    fwd = {name: get(record, "training.forward_flops_per_sample") if name == "torch-eager"
           else get(record, "inference.flops_per_sample") for name in record["inference"]["variants"]}
    t.add_row("FLOPs / sample", si(tr.get("flops_per_sample"), "FLOP") + " (fwd+bwd)",
              *[si(f, "FLOP") + " (fwd)" for f in fwd.values()])
    fed = tr.get("federated")
    if fed:  # no one training machine: rounds and bytes instead of samples/s (bench.json's training.omitted)
        time_cell = (f"{seconds(tr.get('wall_s'))} wall, {count(fed['clients'], 'client')} x "
                     f"{count(fed['rounds'], 'round')}, {seconds(fed.get('round_s_median'))}/round")
        rate_cell = f"federated: {fed['bytes_total'] / 1e6:.2f} MB exchanged"
    else:
        world = get(record, "training.processes.world_size") or 1
        time_cell = f"{seconds(tr.get('wall_s'))} wall, {si(tr.get('samples_per_s'), '/s')} samples"
        rate_cell = si(tr.get("samples_per_s"), " samples/s") + (f" ({world} processes)" if world > 1 else "")
    t.add_row("time", time_cell,
              *[f"p50 {duration_ms(v['latency_ms_p50'])}, p90 {duration_ms(v['latency_ms_p90'])}" for v in vs])
    t.add_row("throughput", rate_cell,
              *[f"{si(v['throughput_per_s'], '/s')} (batch {v['throughput_batch_size']})" for v in vs])
    t.add_row("server", "", *[f"{si(v['server']['max_qps_within_bound'], 'QPS')} ≤ "
                                  f"{duration_ms(v['server']['latency_bound_ms_p99'])} p99" for v in vs])
    e = record["energy"]
    t.add_row("energy", f"{si(get(e, 'training_j.value'), 'J')} ({get(e, 'training_j.method')})",
              *[f"{si(get(e, 'inference_j_per_prediction.value'), 'J')}/prediction "
                f"({get(e, 'inference_j_per_prediction.method')})"] + [""] * (len(vs) - 1))
    cs = record["inference"]["cold_start"]
    rss = tr.get("peak_rss_mb")
    rss_cell = "not measured" if rss is None and fed else f"{(rss or 0):.0f} MB peak"
    t.add_row("cold start / RSS", rss_cell,
              *[f"{seconds(get(cs, 'bundle.time_to_first_prediction_s'))}, "
                f"{(get(cs, 'bundle.peak_rss_mb') or 0):.0f} MB",
                f"{seconds(get(cs, 'torch.time_to_first_prediction_s'))}, "
                f"{(get(cs, 'torch.peak_rss_mb') or 0):.0f} MB"][:len(vs)])
    if e.get("break_even_predictions", {}).get("value"):
        t.caption = f"break-even: {e['break_even_predictions']['value']:,.0f} predictions = the training run's energy"
    return t


def study_table(summary: dict[str, Any], top: int = 8) -> Any:
    """The best trials of a study (the Pareto front first when there are two objectives) as a rich Table."""
    from rich import box
    from rich.table import Table

    metric, objectives = summary["metric"], summary["objectives"]
    maximize = summary["directions"][0] == "maximize"
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    front = {p["number"] for p in summary["pareto"]}
    rows = sorted(done, key=lambda t: (t["number"] not in front if front else False,
                                       -t["values"][0] if maximize else t["values"][0]))[:top]
    table = Table(title=f"tune: top {len(rows)} of {summary['counts']['total']} trials"
                        + ("; ◆ Pareto front" if front else "") + "; ★ best.yaml",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    keys = list(summary["space"])
    for head in ("trial", f"val {metric}", "epochs", "MFLOPs", "time",
                 *(["p50"] if "latency" in objectives else []), *[k.split(".")[-1] for k in keys]):
        table.add_column(head, justify="right" if head != "trial" else "left", no_wrap=True)
    for t in rows:
        mark = ("★" if t["number"] == summary["best"]["number"] else "") + ("◆" if t["number"] in front else "")
        cells = [f"{t['number']} {mark}".strip(), f"{t['values'][0]:.4f}", str(t.get("epochs_run") or "—"),
                 "—" if t.get("flops") is None else f"{t['flops'] * 1e-6:.3f}", seconds(t.get("duration_s"))]
        if "latency" in objectives:
            cells.append(duration_ms(t.get("latency_ms")))
        cells += [_param(t["params"].get(k)) for k in keys]
        table.add_row(*cells)
    return table


def _param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value).replace(" ", "")
