"""HTTP load on `trainfer serve` against a naive FastAPI + onnxruntime server (_naive_server.py), loopback.

Per model (digits MLP; 3x32x32 CNNs: trainfer's default width, ~25 MFLOPs, and `cnn_wide`, ~130 MFLOPs
like the issue's reference CNN) both servers run at once with 1 onnxruntime thread, pinned to core 0;
this process drives them from core 1 with a minimal asyncio HTTP/1.1 keep-alive client (one connection
per request in flight) whose CPU is reported. Same v2 JSON request for both; the CNNs also run trainfer's
binary tensor extension. Closed loop at concurrency 1, 8, 32, 64, then open loop: Poisson arrivals at
0.5x and 1x of the best closed-loop throughput for that request format, each latency timed from its
scheduled send (no coordinated omission; at most 256 connections, waiting for one counts). Each level
runs the variants in turn (A B A B), --reps times, --duration s or --max-requests each. Batch sizes come
from trainfer's /metrics deltas; the batch-1 limit is predictor.predict_proba(x1) calls per second
(1 / mean) here on core 0 with 1 thread, in bursts between the closed-loop levels. Goals: trainfer >= 1.2x the
baseline's req/s at concurrency >= 8, p99 <= 3x p50 at concurrency 64, CNN binary req/s >= 70% of the
batch-1 limit. Last line: one JSON record.

    .venv/bin/python benchmarks/serve_load.py [--quick] [--duration S] [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    MODELS,
    ROOT,
    ensure_bundle,
    environment,
    first_raw_row,
    interleave,
    package_version,
    summarize,
    train_and_export,
)
from _http_load import HOST, OPEN_CONNS, clock, closed_loop, fetch, http, open_loop

SERVER_CORE, CLIENT_CORE = 0, 1
PIN = {SERVER_CORE, CLIENT_CORE} <= os.sched_getaffinity(0)  # 2 cores at least: pin server and client apart
CONCURRENCY, OPEN_FRACTIONS, WARMUP_CALLS = (1, 8, 32, 64), (0.5, 1.0), 50
GOAL_SPEEDUP, GOAL_TAIL, GOAL_BINARY = 1.2, 3.0, 0.7
METRICS = ("trainfer_batch_size_sum", "trainfer_batch_size_count", "trainfer_inference_seconds_sum")


def payloads(name: str, raw: np.ndarray) -> dict[str, bytes]:
    """The v2 request as bytes: JSON for both servers, binary in and out (as Triton clients send) for images."""
    path, dtype = f"/v2/models/{name}/infer", "UINT8" if raw.dtype == np.uint8 else "FP32"
    tensor = {"name": "input", "shape": list(raw.shape), "datatype": dtype}
    body = json.dumps({"inputs": [{**tensor, "data": raw.reshape(-1).tolist()}]}).encode()
    out = {"json": http("POST", path, body, "Content-Type: application/json\r\n")}
    if dtype == "UINT8":
        blob = raw.tobytes()
        head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        out["binary"] = http("POST", path, head + blob, "Content-Type: application/octet-stream\r\n"
                             f"Inference-Header-Content-Length: {len(head)}\r\n")
    return out


def probabilities(head: bytes, body: bytes) -> np.ndarray:
    i = head.find(b"\r\ninference-header-content-length:")
    if i < 0:
        return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float32)
    n = int(head[i + 34:head.find(b"\r\n", i + 2)])
    return np.frombuffer(body[n:n + json.loads(body[:n])["outputs"][0]["parameters"]["binary_data_size"]], "<f4")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


async def scrape(srv: dict[str, Any]) -> dict[str, float]:
    if not srv["metrics"]:
        return {}
    _, _, body = await fetch(srv["port"], http("GET", "/metrics"))
    return {k: float(v) for k, v in (ln.split(" ", 1) for ln in body.decode().splitlines()) if k in METRICS}


async def level(srv: dict[str, Any], payload: bytes, mode: str, load: float, args: Any, seed: int) -> dict[str, Any]:
    m0, c0, s0, t0 = await scrape(srv), time.process_time(), cpu_s(srv["proc"].pid), clock()
    if mode == "closed":
        rec = await closed_loop(srv["port"], payload, int(load), args.duration, args.max_requests)
    else:
        rec = await open_loop(srv["port"], payload, load, args.duration, args.max_requests, seed)
    out = {"rec": rec, "wall_s": (clock() - t0) / 1e9, "client_cpu_s": time.process_time() - c0,
           "server_cpu_s": cpu_s(srv["proc"].pid) - s0}
    m1 = await scrape(srv)
    out.update({k: m1[k] - m0.get(k, 0.0) for k in m1})
    fast, end = 0, time.monotonic() + 30  # settle: health answered fast twice in a row (backlog drained)
    while fast < 2 and time.monotonic() < end:
        t = clock()
        await fetch(srv["port"], http("GET", "/v2/health/ready"))
        fast = fast + 1 if clock() - t < 20e6 else 0
        await asyncio.sleep(0.05)
    return out


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The reps of one variant at one level: raw samples joined, counts and seconds summed."""
    lat, lag = [x for p in parts for x in p["rec"].lat], [x for p in parts for x in p["rec"].lag]
    codes: Counter[str] = sum((p["rec"].codes for p in parts), Counter())
    tot = {k: sum(p.get(k, 0.0) for p in parts) for k in ("wall_s", "client_cpu_s", "server_cpu_s", *METRICS)}
    wall = tot["wall_s"]
    res = {"throughput_per_s": len(lat) / wall, **summarize(np.asarray(lat) * 1e-9),
           "throughput_per_s_reps": [len(p["rec"].lat) / p["wall_s"] for p in parts], "ok": len(lat),
           "errors_503": codes["503"], "errors_504": codes["504"], "errors_other": codes["other"], "window_s": wall,
           "client_cpu_frac": tot["client_cpu_s"] / wall, "server_cpu_frac": tot["server_cpu_s"] / wall,
           "server_cpu_us_per_req": 1e6 * tot["server_cpu_s"] / max(1, sum(codes.values()))}
    if tot["trainfer_batch_size_count"]:
        res["avg_batch_size"] = tot["trainfer_batch_size_sum"] / tot["trainfer_batch_size_count"]
        # trainfer's inference histogram: the model's own time per batch (session.run in the batcher)
        res["inference_ms_per_batch"] = 1e3 * tot["trainfer_inference_seconds_sum"] / tot["trainfer_batch_size_count"]
    if lag:
        res["send_lag_ms_p99"] = float(np.percentile(lag, 99)) / 1e6
    return res


def start(cmd: list[str], log: Path, metrics: bool) -> dict[str, Any]:
    """A server process pinned to SERVER_CORE, once /v2/health/ready answers (60 s at most)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {SERVER_CORE})) if PIN else None)
    while time.perf_counter() - t0 < 60 and proc.poll() is None:
        with contextlib.suppress(OSError):
            if asyncio.run(fetch(port, http("GET", "/v2/health/ready")))[0] == 200:
                return {"proc": proc, "port": port, "metrics": metrics, "startup_s": time.perf_counter() - t0}
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} did not start:\n{log.read_text()[-2000:]}")


class InProcess:
    """The model called in this process on the server's core with 1 thread: predict_proba(x1) latency in
    bursts between the HTTP levels (the machine's speed drifts; the limit is timed in the same window as
    the servers), and run() rows/s at ``batch`` rows once, for the regime."""

    def __init__(self, bundle: Path, raw: np.ndarray, batch: int) -> None:
        import trainfer

        self.p, self.raw, self.batch = trainfer.load(bundle, threads=1), raw, batch
        self.b1: list[int] = []
        self.burst_p50_ms: list[float] = []

    def _time(self, fn: Any, count: int, seconds: float) -> list[int]:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {SERVER_CORE} if PIN else before)
        try:
            timed = interleave({"fn": fn}, count, seconds, warmup=WARMUP_CALLS, block=1).samples["fn"]
            return np.rint(timed * 1e9).astype(np.int64).tolist()
        finally:
            os.sched_setaffinity(0, before)

    def burst(self, seconds: float) -> None:
        ns = self._time(lambda: self.p.predict_proba(self.raw), 50, seconds)
        self.b1 += ns
        self.burst_p50_ms.append(float(np.median(ns)) / 1e6)

    def summary(self) -> dict[str, Any]:
        xb = self.p.prepare(np.repeat(self.raw, self.batch, axis=0))
        bn = summarize(np.asarray(self._time(lambda: self.p.run(xb), 20, 0.5)) * 1e-9)
        b1 = summarize(np.asarray(self.b1) * 1e-9)
        # Calls per second back to back (1 / mean), like the servers' req/s (count / time); 1 / p50 is
        # reported beside it and is ~2-5% higher, since the mean carries the machine's hiccups.
        limit = 1e9 * len(self.b1) / sum(self.b1)
        rows = self.batch * 1e3 / bn["latency_ms_p50"]
        return {"predict_proba_b1": b1, "batch1_limit_per_s": limit, "batch1_p50_limit_per_s":
                1e3 / b1["latency_ms_p50"], "b1_burst_p50_ms": self.burst_p50_ms,
                f"run_b{self.batch}": bn, "batched_rows_per_s": rows, "batching_gain": rows / limit,
                "regime": "overhead-bound: batching multiplies throughput" if rows / limit >= 2
                else "compute-bound: batching barely gains"}


async def bench_model(name: str, servers: dict[str, dict[str, Any]], raw: np.ndarray, want: np.ndarray,
                      ip: InProcess, args: Any) -> dict[str, Any]:
    bodies, first = payloads(name, raw), {}
    variants = [("trainfer", "json"), ("naive", "json")] + [("trainfer", "binary")] * ("binary" in bodies)
    for srv, fmt in variants:  # first call (cold), same answer as in-process, then warm up
        t = clock()
        status, head, body = await fetch(servers[srv]["port"], bodies[fmt])
        first[f"{srv}_{fmt}"] = (clock() - t) / 1e6
        assert status == 200, body[:300]
        np.testing.assert_allclose(probabilities(head, body), want.reshape(-1), atol=1e-4)
        await closed_loop(servers[srv]["port"], bodies[fmt], 8, 0.3 if args.quick else 1.0, 10**6)
    parts: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
    cap: dict[str, float] = {}
    for mode, levels in (("closed", CONCURRENCY), ("open", OPEN_FRACTIONS)):
        for lv in levels:
            for rep in range(args.reps):
                for srv, fmt in variants:  # A B A B: every variant in each rep, back to back
                    load = lv if mode == "closed" else lv * cap[fmt]
                    parts.setdefault((srv, fmt, mode, lv), []).append(
                        await level(servers[srv], bodies[fmt], mode, load, args, seed=rep))
                if mode == "closed":  # the batch-1 limit, timed between the levels it is compared with
                    ip.burst(0.25 if args.quick else 1.0)
        rows = {k: pooled(v) for k, v in parts.items()}
        cap = cap or {fmt: max(r["throughput_per_s"] for k, r in rows.items() if k[1] == fmt) for _, fmt in variants}
    for (srv, fmt, mode, lv), r in rows.items():
        r.update(server=srv, format=fmt, mode=mode, **({"concurrency": lv} if mode == "closed" else
                                                        {"rate_fraction": lv, "rate_per_s": lv * cap[fmt]}))
    return {"capacity_per_s": cap, "first_request_ms": first, "levels": list(rows.values()),
            "startup_s": {k: s["startup_s"] for k, s in servers.items()}}


def goals(res: dict[str, Any]) -> dict[str, Any]:
    lv = {(r["server"], r["format"], r.get("concurrency")): r for r in res["levels"] if r["mode"] == "closed"}
    out: dict[str, Any] = {"speedup_vs_naive": {}, "p99_over_p50_c64": {}}
    for c in CONCURRENCY:
        t, n = lv[("trainfer", "json", c)], lv[("naive", "json", c)]
        pairs = [a / b for a, b in zip(t["throughput_per_s_reps"], n["throughput_per_s_reps"], strict=True) if b]
        out["speedup_vs_naive"][c] = {"pooled": t["throughput_per_s"] / n["throughput_per_s"],
                                      "paired_median": float(np.median(pairs)) if pairs else None}
    out["pass_speedup"] = all(v["pooled"] >= GOAL_SPEEDUP for c, v in out["speedup_vs_naive"].items() if c >= 8)
    for fmt in res["capacity_per_s"]:
        r = lv[("trainfer", fmt, 64)]
        out["p99_over_p50_c64"][fmt] = r["latency_ms_p99"] / r["latency_ms_p50"] if "latency_ms_p99" in r else None
    tails = list(out["p99_over_p50_c64"].values())
    out["pass_tail"] = None if None in tails else all(x <= GOAL_TAIL for x in tails)  # None: under 662 samples
    if "binary" in res["capacity_per_s"]:
        cap, ip = res["capacity_per_s"]["binary"], res["inprocess"]
        out["binary_over_batch1_limit"] = cap / ip["batch1_limit_per_s"]
        out["binary_over_batch1_p50_limit"] = cap / ip["batch1_p50_limit_per_s"]
        out["pass_binary"] = out["binary_over_batch1_limit"] >= GOAL_BINARY
    return out


def print_table(name: str, res: dict[str, Any]) -> None:
    ip, g = res["inprocess"], res["goals"]
    print(f"\n{name}: predict_proba(x1) p50 {1e3 * ip['predict_proba_b1']['latency_ms_p50']:.0f} us in-process -> "
          f"batch-1 limit {ip['batch1_limit_per_s']:.0f}/s (1/p50: {ip['batch1_p50_limit_per_s']:.0f}/s); "
          f"batched run {ip['batched_rows_per_s']:.0f} rows/s "
          f"({ip['batching_gain']:.1f}x): {ip['regime']}")
    print(f"  {'server':<9}{'fmt':<7}{'load':>8}{'req/s':>7}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'503':>6}{'504':>6}"
          f"{'oth':>5}{'batch':>6}{'cli cpu':>8}{'srv cpu':>8}{'srv us/req':>11}")
    for r in res["levels"]:
        load = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate_per_s']:.0f}/s"
        q = "".join(f"{r[k]:8.1f}" if k in r else f"{'-':>8}" for k in ("latency_ms_p50", "latency_ms_p90",
                                                                         "latency_ms_p99"))
        print(f"  {r['server']:<9}{r['format']:<7}{load:>8}{r['throughput_per_s']:7.0f}{q}{r['errors_503']:6d}"
              f"{r['errors_504']:6d}{r['errors_other']:5d}{r.get('avg_batch_size', 1.0):6.1f}"
              f"{r['client_cpu_frac']:8.2f}{r['server_cpu_frac']:8.2f}{r['server_cpu_us_per_req']:11.0f}")
    print("  trainfer/naive req/s: " + ", ".join(f"c={c} {v['pooled']:.2f}x" for c, v in g["speedup_vs_naive"].items())
          + f" (goal >= {GOAL_SPEEDUP}x at c >= 8): {'PASS' if g['pass_speedup'] else 'FAIL'}")
    print("  trainfer p99/p50 at c=64: " + ", ".join(f"{k} {v:.2f}" if v else f"{k} -" for k, v in
                                                     g["p99_over_p50_c64"].items()) + f" (goal <= {GOAL_TAIL}): "
          f"{ {True: 'PASS', False: 'FAIL', None: 'n/a (under 662 samples)'}[g['pass_tail']]}")
    if "pass_binary" in g:
        print(f"  binary req/s / batch-1 limit: {g['binary_over_batch1_limit']:.2f} (/ 1/p50 limit: "
              f"{g['binary_over_batch1_p50_limit']:.2f}) (goal >= {GOAL_BINARY}): "
              f"{'PASS' if g['pass_binary'] else 'FAIL'}")


def run_model(name: str, run_dir: Path, bundle: Path, work: Path, args: Any) -> dict[str, Any]:
    from trainfer.training import Run

    raw = first_raw_row(Run.load(run_dir))
    ip = InProcess(bundle, raw, args.max_batch_size)
    ip.burst(1.0 if args.quick else 3.0)
    want = ip.p.predict_proba(raw)
    limits = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("max_batch_size", "max_delay_ms", "max_queue",
                                                                        "timeout_ms")]
    cmds = {"trainfer": [str(Path(sys.executable).parent / "trainfer"), "serve", *limits],
            "naive": [sys.executable, str(ROOT / "benchmarks" / "_naive_server.py")]}
    servers: dict[str, dict[str, Any]] = {}
    try:
        for key, cmd in cmds.items():
            servers[key] = start([*cmd, str(bundle), "--name", name, "--threads", "1"], work / f"{name}-{key}.log",
                                 metrics=key == "trainfer")
        res = asyncio.run(bench_model(name, servers, raw, want, ip, args))
    finally:
        for s in servers.values():
            s["proc"].terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s["proc"].wait(10)
            s["proc"].kill()
    res["inprocess"] = ip.summary()
    res["goals"] = goals(res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 s levels, 1 rep, shorter training")
    ap.add_argument("--duration", type=float, help="seconds per level, variant and rep (default 5; --quick 2)")
    ap.add_argument("--reps", type=int, help="interleaved repetitions per level (default 2; --quick 1)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per level, variant and rep, at most")
    ap.add_argument("--max-batch-size", type=int, default=32, help="trainfer serve's own defaults")
    ap.add_argument("--max-delay-ms", type=float, default=0.0)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--timeout-ms", type=float, default=1000.0)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    for model in MODELS:
        flag = model.removesuffix("_mlp").replace("_", "-")
        ap.add_argument(f"--{flag}-run", type=Path, help=f"existing {model} run (default: train one)")
        ap.add_argument(f"--{flag}-bundle", type=Path, help=f"existing {model} bundle (default: export the run)")
    args = ap.parse_args()
    args.duration, args.reps = args.duration or (2.0 if args.quick else 5.0), args.reps or (1 if args.quick else 2)
    t_start, load_start, results = time.perf_counter(), os.getloadavg(), {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for name in args.models.split(","):
            key = name.removesuffix("_mlp")
            run_dir, bundle = getattr(args, f"{key}_run"), getattr(args, f"{key}_bundle")
            if run_dir is None:
                print(f"training {name} into {tmp} ...", flush=True)
                quick_epochs = 5 if args.quick and name == "digits_mlp" else None
                run_dir, bundle = train_and_export(name, Path(tmp), epochs=quick_epochs)
            bundle = ensure_bundle(run_dir, bundle, Path(tmp) / f"{name}-bundle")
            if PIN:
                os.sched_setaffinity(0, {CLIENT_CORE})  # this thread, and the client's event loop on it
            results[name] = run_model(name, run_dir, bundle, Path(tmp), args)
            print_table(name, results[name])
    flags = [r["goals"][k] for r in results.values() for k in ("pass_speedup", "pass_tail", "pass_binary")
             if k in r["goals"]]
    peak_client = max(r["client_cpu_frac"] for m in results.values() for r in m["levels"])
    print(f"\nclient CPU at most {peak_client:.2f} of its core; load average {load_start} at start, "
          f"{os.getloadavg()} at end; {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({
        "benchmark": "serve_load", "pass": all(f is True for f in flags), "models": results,
        "client_cpu_frac_max": peak_client, "runtime_s": time.perf_counter() - t_start,
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "config": {"quick": args.quick, "duration_s": args.duration, "reps": args.reps, "loopback": HOST,
                   "max_requests": args.max_requests, "concurrency": CONCURRENCY, "open_rate_fractions": OPEN_FRACTIONS,
                   "open_loop_max_connections": OPEN_CONNS, "server_threads": 1, "access_log": "on (uvicorn default)",
                   "pinned": {"server_core": SERVER_CORE, "client_core": CLIENT_CORE} if PIN else None,
                   **{k: getattr(args, k) for k in ("max_batch_size", "max_delay_ms", "max_queue", "timeout_ms")},
                   "goals": {"speedup": GOAL_SPEEDUP, "p99_over_p50": GOAL_TAIL, "binary_over_batch1": GOAL_BINARY}},
        "env": {**environment(1), "server_stack": {
            d: package_version(d) for d in ("fastapi", "starlette", "uvicorn", "h11", "httptools", "uvloop")}},
    }, default=str))


if __name__ == "__main__":
    main()
