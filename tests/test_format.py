"""How figures read (issue 10, points 28 and 30): one duration helper for the optimize and bench tables, the
HTML report and the infographic (times under 1 ms in µs, "0.01132 ms" -> "11.3 µs"), counts that agree with
their noun ("1 thread"), an optimize table that fits 100 terminal columns (every column with --wide), and
`optimize --help` naming every variant from the variants table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import run_main
from rich.console import Console

from trainfer._variants import VARIANTS
from trainfer.reporting.fmt import count, duration_ms
from trainfer.reporting.tables import bench_table, optimize_table

CUT = "…"


@pytest.mark.parametrize(("ms", "text"), [
    (0.01132, "11.3 µs"), (0.0009996, "1 µs"), (0.5, "500 µs"), (0.99949, "999 µs"), (0.9996, "1 ms"),
    (1.0, "1 ms"), (1.234, "1.23 ms"), (12.345, "12.3 ms"), (999.4, "999 ms"), (999.6, "1 s"), (2500, "2.5 s"),
    (150_000, "2.5 min"), (None, "—"), (float("nan"), "—"),
])
def test_duration_reads_in_the_unit_that_fits(ms: float | None, text: str) -> None:
    assert duration_ms(ms) == text


def test_count_agrees_with_its_noun() -> None:
    assert count(1, "thread") == "1 thread"
    assert count(4, "thread") == "4 threads"
    assert count(1200, "row") == "1,200 rows"
    assert count(None, "thread") == "—"


def _record(threads: int = 1, chosen: str = "pruned-50+int8-static-minmax") -> dict[str, Any]:
    """An optimize record with every variant of the table, the widest statuses and sub-ms latencies."""
    rows = []
    for i, v in enumerate(VARIANTS):
        status = ["kept", "over_budget", "failed", "skipped"][i % 4] if v.name != chosen else "over_budget"
        measured = status in ("kept", "over_budget")
        rows.append({
            "name": v.name, "status": status, "chosen": v.name == chosen,
            "reason": None if measured else "ExportError: something broke",
            **({"size_mb": 0.0151, "val_accuracy": 0.9777, "test_accuracy": 0.9740, "val_drop": -0.37,
                "val_drop_bound": 1.2345, "latency_ms_p50": 0.01132 + i * 1e-3, "latency_ms_p90": 0.0213,
                "speedup_vs_torch": 12.3456, "params": 1_234_567, "flops": 2_469_134} if measured else {}),
        })
    return {"metric": "accuracy", "drop_unit": "points", "max_accuracy_drop": 0.5, "threads": threads,
            "chosen": chosen, "reason": "forced", "variants": rows}


def _render(table: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(table)
    return console.export_text().splitlines()


def test_optimize_table_fits_100_columns_without_cutting_a_figure() -> None:
    record = _record(threads=1)
    lines = _render(optimize_table(record), 100)
    assert max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    assert CUT not in text, text
    assert "1 thread;" in text and "1 threads" not in text
    for r in record["variants"]:  # one line per variant: its name, full status and (when measured) its p50
        line = next(line for line in lines if line.startswith(r["name"] + " "))
        assert ("over budget" if r["status"] == "over_budget" else r["status"]) in line
        if "latency_ms_p50" in r:
            assert duration_ms(r["latency_ms_p50"]) in line and "µs" in line
    assert not re.search(r"\b0\.0\d+ ?ms\b", text), "a sub-millisecond time printed in ms"
    for head in ("params", "MFLOPs", "size MB"):  # the narrow table leaves these to --wide
        assert head not in text


def test_optimize_table_wide_has_every_column() -> None:
    lines = _render(optimize_table(_record(threads=8), wide=True), 200)
    text = "\n".join(lines)
    assert CUT not in text and "8 threads" in text
    for head in ("variant", "status", "size MB", "val acc", "test acc", "val drop", "95% bound", "p50", "p90",
                 "vs torch", "params", "MFLOPs"):
        assert head in lines[1], (head, lines[1])
    assert "1,234,567" in text and "2.469" in text and "21.3 µs" in text


def test_bench_table_reads_sub_ms_times_in_us_and_counts_threads() -> None:
    v = {"latency_ms_p50": 0.0123, "latency_ms_p90": 0.0456, "throughput_per_s": 81000.0,
         "throughput_batch_size": 64, "server": {"max_qps_within_bound": 5000.0, "latency_bound_ms_p99": 0.25}}
    record = {"mode": "quick", "inference": {"threads": 1, "variants": {"bundle:onnx-fp32": v, "torch-eager": v},
                                             "flops_per_sample": 20224, "cold_start": {}},
              "training": {"flops_per_sample": 60672, "wall_s": 3.2, "samples_per_s": 5000.0},
              "energy": {}}
    text = "\n".join(_render(bench_table(record), 200))
    assert "1 thread)" in text and "1 threads" not in text
    assert "p50 12.3 µs, p90 45.6 µs" in text and "≤ 250 µs p99" in text
    assert not re.search(r"\b0\.0\d+ ?ms\b", text), text


def test_optimize_cli_prints_the_narrow_table_and_wide_on_request(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path, capsys) -> None:
    from trainfer.exporting import optimize as optimize_module

    monkeypatch.setattr(optimize_module, "optimize", lambda *a, **k: {**_record(), "bundle": str(tmp_path / "b"),
                                                                      "recommended_threads": 1})
    narrow = run_main(["optimize", tmp_path, "--out", tmp_path / "b"], capsys).check()
    wide = run_main(["optimize", tmp_path, "--out", tmp_path / "b", "--wide"], capsys).check()
    assert "MFLOPs" not in narrow.stdout and "MFLOPs" in wide.stdout and "params" in wide.stdout
    assert max(len(line) for line in narrow.stdout.splitlines() if "★" in line or "kept" in line) <= 100


def test_optimize_help_lists_every_variant_from_the_table(capsys) -> None:
    res = run_main(["optimize", "--help"], capsys)
    assert res.returncode == 0
    flat = re.sub(r"[\s│]+", " ", res.stdout)
    for v in VARIANTS:
        assert v.name in flat, v.name
    assert "--wide" in flat
