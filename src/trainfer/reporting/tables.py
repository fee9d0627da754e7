"""Terminal tables (rich) for the optimize record and bench.json, shared by the CLI verbs."""

from __future__ import annotations

from typing import Any

STATUS = {"kept": "✅ kept", "over_budget": "❎ over budget", "failed": "❌ failed", "skipped": "➖ skipped"}


def optimize_table(record: dict[str, Any]) -> Any:
    """The variants table as a rich Table (also used by `trainfer run`)."""
    from rich.table import Table

    m, unit = record["metric"], record["drop_unit"]
    table = Table(title=f"optimize: budget {record['max_accuracy_drop']} {unit}, {record['threads']} threads")
    for col in ("variant", "status", "size MB", f"val {m}", f"test {m}", f"val drop ({unit})", "95% bound", "p50 ms",
                "p90 ms",
                "speedup vs torch", "params", "MFLOPs"):
        if col == "variant":  # names are what people search the table for: never cut them
            width = max(len(r["name"]) for r in record["variants"])
            table.add_column(col, no_wrap=True, min_width=width)
        else:
            table.add_column(col, justify="left" if col == "status" else "right")

    def f(v: Any, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    for r in record["variants"]:
        status = STATUS.get(r["status"], r["status"]) + (" ★ chosen" if r.get("chosen") else "")
        table.add_row(r["name"], status, f(r.get("size_mb"), ".3f"), f(r.get(f"val_{m}"), ".4f"),
                      f(r.get(f"test_{m}"), ".4f"), f(r.get("val_drop"), "+.2f"), f(r.get("val_drop_bound"), "+.2f"),
                      f(r.get("latency_ms_p50"), ".4f"),
                      f(r.get("latency_ms_p90"), ".4f"), f(r.get("speedup_vs_torch"), ".2f"),
                      f(r.get("params"), ","), f(None if r.get("flops") is None else r["flops"] / 1e6, ".3f"))
    return table


def bench_table(record: dict[str, Any]) -> Any:
    """The headline figures of bench.json as a rich Table (also used by `trainfer run`)."""
    from rich.table import Table

    from trainfer.reporting.fmt import get, ms, seconds, si

    t = Table(title=f"trainfer bench ({record['mode']}, {record['inference']['threads']} threads)")
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
    t.add_row("time", f"{seconds(tr.get('wall_s'))} wall, {si(tr.get('samples_per_s'), '/s')} samples",
              *[f"p50 {ms(v['latency_ms_p50'])}, p90 {ms(v['latency_ms_p90'])}" for v in vs])
    t.add_row("throughput", si(tr.get("samples_per_s"), " samples/s"),
              *[f"{si(v['throughput_per_s'], '/s')} (batch {v['throughput_batch_size']})" for v in vs])
    t.add_row("server", "", *[f"{si(v['server']['max_qps_within_bound'], 'QPS')} ≤ "
                                  f"{v['server']['latency_bound_ms_p99']:.3g} ms p99" for v in vs])
    e = record["energy"]
    t.add_row("energy", f"{si(get(e, 'training_j.value'), 'J')} ({get(e, 'training_j.method')})",
              *[f"{si(get(e, 'inference_j_per_prediction.value'), 'J')}/prediction "
                f"({get(e, 'inference_j_per_prediction.method')})"] + [""] * (len(vs) - 1))
    cs = record["inference"]["cold_start"]
    t.add_row("cold start / RSS", f"{(tr.get('peak_rss_mb') or 0):.0f} MB peak",
              *[f"{seconds(get(cs, 'bundle.time_to_first_prediction_s'))}, "
                f"{(get(cs, 'bundle.peak_rss_mb') or 0):.0f} MB",
                f"{seconds(get(cs, 'torch.time_to_first_prediction_s'))}, "
                f"{(get(cs, 'torch.peak_rss_mb') or 0):.0f} MB"][:len(vs)])
    if e.get("break_even_predictions", {}).get("value"):
        t.caption = f"break-even: {e['break_even_predictions']['value']:,.0f} predictions = the training run's energy"
    return t
