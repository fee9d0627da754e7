"""MLPerf LoadGen scenarios (SingleStream, Offline, Server) around any batch-predict function.

LoadGen issues the queries and times them (from each query's scheduled time, so a slow system
cannot hide its queueing); we parse its detail log for the result and its validity.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._imports import require

PredictFn = Callable[[np.ndarray], Any]  # takes sample indices, predicts them


def run_scenario(predict: PredictFn, n_samples: int, scenario: str, *, min_duration_s: float, min_queries: int,
                 expected_latency_s: float | None = None, expected_qps: float | None = None,
                 batch_size: int = 1, server_target_latency_s: float | None = None) -> dict[str, Any]:
    """Run one LoadGen scenario in PerformanceOnly mode; returns its result figures and validity."""
    lg = require("mlperf_loadgen", extra="bench")

    def issue(queries: list[Any]) -> None:
        for i in range(0, len(queries), batch_size):
            part = queries[i:i + batch_size]
            predict(np.fromiter((q.index for q in part), dtype=np.int64, count=len(part)))
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in part])

    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, scenario)
    s.mode = lg.TestMode.PerformanceOnly
    s.min_duration_ms = int(min_duration_s * 1000)
    s.min_query_count = int(min_queries)
    if expected_latency_s is not None:
        s.single_stream_expected_latency_ns = max(int(expected_latency_s * 1e9), 1000)
    if expected_qps is not None:
        s.offline_expected_qps = float(expected_qps)
        s.server_target_qps = float(expected_qps)
    if server_target_latency_s is not None:
        s.server_target_latency_ns = int(server_target_latency_s * 1e9)
        s.server_target_latency_percentile = 0.99
    with tempfile.TemporaryDirectory(prefix="trainfer-loadgen-") as out:
        log = lg.LogSettings()
        log.log_output.outdir = out
        log.log_output.copy_summary_to_stdout = False
        log.enable_trace = False
        sut = lg.ConstructSUT(issue, lambda: None)
        qsl = lg.ConstructQSL(n_samples, min(n_samples, 1024), lambda _s: None, lambda _s: None)
        try:
            lg.StartTestWithLogSettings(sut, qsl, s, log)
        finally:
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        return _parse(Path(out) / "mlperf_log_detail.txt", scenario)


def _parse(path: Path, scenario: str) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            rec = json.loads(line[len(":::MLLOG "):])
            if rec["key"].startswith("result_"):
                raw[rec["key"]] = rec["value"]
    ms = {p: raw.get(f"result_{p}_percentile_latency_ns") for p in ("50.00", "90.00", "99.00")}
    out: dict[str, Any] = {
        "scenario": scenario, "validity": raw.get("result_validity"),
        "latency_ms_p50": ms["50.00"] / 1e6 if ms["50.00"] is not None else None,
        "latency_ms_p90": ms["90.00"] / 1e6 if ms["90.00"] is not None else None,
        "latency_ms_p99": ms["99.00"] / 1e6 if ms["99.00"] is not None else None,
        "min_duration_met": raw.get("result_min_duration_met"), "min_queries_met": raw.get("result_min_queries_met"),
    }
    if scenario == "Offline":
        out["throughput_per_s"] = raw.get("result_samples_per_second")
    elif scenario == "SingleStream":
        out["throughput_per_s"] = raw.get("result_qps_without_loadgen_overhead")
    else:
        out["throughput_per_s"] = raw.get("result_completed_samples_per_sec",
                                          raw.get("result_scheduled_samples_per_sec"))
        out["latency_bound_met"] = raw.get("result_perf_constraints_met")
    return out
