"""Edge footprint: the digits MLP and the CNN in the browser (onnxruntime-web, wasm) and in plain Python onnxruntime.

For each model, from its whole-graph bundle (model.onnx takes raw columns / UINT8 images):

  bundle      the bundle's size on disk (every file)
  browser     the page from `trainfer web` (trainfer.web.build_site), served by trainfer's static server
              (COOP/COEP headers), opened in headless Chromium (Debian's) through tests/web_driver.mjs with a
              fresh profile each run, so nothing is cached: the page's total transfer size (the sum of
              encodedDataLength over every request: what the browser fetched), the time to first prediction
              (navigation start -> runtime, wasm and model loaded -> first predicted row: the page's own
              window.trainfer.timings), and p50 of session.run at batch 1 (10 warm-up calls, then --calls);
              then a second visit in the same browser (HTTP cache revalidated, compiled wasm cached)
  python      a fresh interpreter with plain onnxruntime and no trainfer: time to first prediction from the
              parent's spawn (import onnxruntime + session creation + first run), then p50 of session.run at
              batch 1 (10 warm-up calls, then --calls), 1 intra-op thread

Runs alternate browser/python, --runs times each (3; --quick: 2); medians. The wasm build runs with the
thread count onnxruntime-web chooses (recorded; 1 on a 2-core machine). Needs scripts/ensure-web.

    .venv/bin/python benchmarks/edge.py [--quick] [--runs N] [--calls N]

The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, environment, summarize, train_and_export

DRIVER = ROOT / "tests" / "web_driver.mjs"
PUPPETEER = "24.43.1"  # scripts/ensure-web

PYTHON_CHILD = """\
import sys, time, json
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as z:
    feeds = {k: z[k] for k in z.files}
out = s.run(None, feeds)
first = time.time() - float(sys.argv[3])
assert "trainfer" not in sys.modules
for _ in range(10):
    s.run(None, feeds)
samples = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter()
    s.run(None, feeds)
    samples.append(time.perf_counter() - t)
print(json.dumps({"time_to_first_prediction_s": first, "samples_s": samples, "label": str(out[-1][0]),
                  "onnxruntime": ort.__version__}))
"""


def _bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _inputs(run_path: Path, bundle: Path, work: Path) -> tuple[dict[str, Any], Path]:
    """One test sample as the page gets it (a CSV text, or a PNG file) and as plain onnxruntime gets it (npz)."""
    from PIL import Image

    from trainfer.training import Run

    manifest = json.loads((bundle / "manifest.json").read_text())
    raw = manifest["input"]["raw_inputs"]
    rows = Run.load(run_path).load_split("test")[0]
    npz = work / f"{bundle.parent.name}-feeds.npz"
    if raw[0]["dtype"] == "uint8":
        img = np.asarray(rows)[0]
        png = work / f"{bundle.parent.name}.png"
        Image.fromarray(img).save(png)
        np.savez(npz, **{raw[0]["name"]: img[None]})
        return {"do": "images", "paths": [str(png)]}, npz
    row = rows.iloc[0]
    cols = [r["column"] for r in raw]
    text = ",".join(cols) + "\n" + ",".join(repr(float(row[c])) for c in cols) + "\n"
    np.savez(npz, **{r["name"]: np.array([[row[r["column"]]]], dtype=np.float32) for r in raw})
    return {"do": "paste", "text": text}, npz


def browser_run(url: str, step: dict[str, Any], calls: int) -> dict[str, Any]:
    job = {"puppeteer": str(Path(os.environ.get("TRAINFER_CACHE") or Path.home() / ".cache" / "trainfer")
                            / f"puppeteer-core-{PUPPETEER}" / "node_modules" / "puppeteer-core"),
           "chromium": os.environ.get("TRAINFER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
           "pages": [{"url": url, "steps": [step, {"do": "bench", "n": 10}, {"do": "bench", "n": calls}]},
                     {"url": url, "steps": [step]}]}  # a second visit: HTTP cache (revalidated) and wasm code cache
    done = subprocess.run(["node", str(DRIVER)], input=json.dumps(job), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the browser driver failed:\n{done.stderr[-3000:]}")
    page, again = json.loads(done.stdout)["pages"]
    for p in (page, again):
        errors = [m for m in p["console"] if m["type"] == "error"] + p["page_errors"]
        if "driver_error" in p or errors or p["steps"][0]["error"]:
            raise SystemExit(f"the page failed: {p.get('driver_error')} {errors} {p['steps'][0]['error']}")
    t = page["steps"][0]["timings"]
    return {"time_to_first_prediction_s": t["first_prediction_ms"] / 1e3, "ready_s": t["ready_ms"] / 1e3,
            "session_create_s": t["session_ms"] / 1e3, "first_call_s": t["first_call_ms"] / 1e3,
            "transfer_bytes": page["transfer_bytes"], "samples_s": [x / 1e3 for x in page["steps"][2]["samples"]],
            "label": page["steps"][0]["rows"][0]["label"], "threads": page["loaded"]["threads"],
            "requests": len(page["network"]),
            "repeat_visit_time_to_first_prediction_s": again["steps"][0]["timings"]["first_prediction_ms"] / 1e3,
            "repeat_visit_transfer_bytes": again["transfer_bytes"]}


def python_run(model: Path, npz: Path, calls: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # plain onnxruntime: trainfer not on the path
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", PYTHON_CHILD, str(model), str(npz), repr(t0), str(calls)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the python child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 runs each, 200 calls, shorter training")
    ap.add_argument("--runs", type=int, default=None, help="fresh browser / fresh process runs per model (3)")
    ap.add_argument("--calls", type=int, default=None, help="timed batch-1 calls per run (1000; --quick 200)")
    args = ap.parse_args()
    runs = args.runs or (2 if args.quick else 3)
    calls = args.calls or (200 if args.quick else 1000)

    from trainfer.web import build_site, make_server
    from trainfer.web.server import url_of

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        work = Path(tmp)
        for name in ("digits_mlp", "cnn"):
            print(f"training and exporting {name} ...", flush=True)
            run_path, bundle = train_and_export(name, work, epochs=2 if args.quick else None)
            site = Path(build_site(bundle, work / f"{name}-site")["site"])
            step, npz = _inputs(run_path, bundle, work)
            server = make_server(site, "127.0.0.1", 0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            raw: dict[str, list[dict[str, Any]]] = {"browser": [], "python": []}
            try:
                for i in range(runs + 1):  # the first round warms the page cache and bytecode; not kept
                    for kind in (("browser", "python") if i % 2 == 0 else ("python", "browser")):
                        r = (browser_run(url_of(server), step, calls) if kind == "browser"
                             else python_run(bundle / "model.onnx", npz, calls))
                        if i:
                            raw[kind].append(r)
            finally:
                server.shutdown()
                server.server_close()
            labels = {r["label"] for k in raw for r in raw[k]}
            if len(labels) != 1:
                raise SystemExit(f"{name}: the browser and python onnxruntime disagree: {labels}")

            def med(kind: str, key: str) -> float:
                return statistics.median(r[key] for r in raw[kind])  # noqa: B023 - used in this iteration

            b = {"time_to_first_prediction_s": med("browser", "time_to_first_prediction_s"),
                 "ready_s": med("browser", "ready_s"), "session_create_s": med("browser", "session_create_s"),
                 "first_call_s": med("browser", "first_call_s"), "transfer_bytes": raw["browser"][0]["transfer_bytes"],
                 "repeat_visit_time_to_first_prediction_s": med("browser", "repeat_visit_time_to_first_prediction_s"),
                 "repeat_visit_transfer_bytes": raw["browser"][0]["repeat_visit_transfer_bytes"],
                 "requests": raw["browser"][0]["requests"], "threads": raw["browser"][0]["threads"],
                 **summarize([s for r in raw["browser"] for s in r["samples_s"]])}
            p = {"time_to_first_prediction_s": med("python", "time_to_first_prediction_s"), "threads": 1,
                 "onnxruntime": raw["python"][0]["onnxruntime"],
                 **summarize([s for r in raw["python"] for s in r["samples_s"]])}
            results[name] = {"bundle_bytes": _bytes_on_disk(bundle), "site_bytes": _bytes_on_disk(site),
                             "browser": b, "python": p, "label": labels.pop()}

    print(f"\n{'model':<11}{'bundle KB':>10}{'page MB':>9}{'side':>9}{'1st pred ms':>13}{'p50 ms':>9}"
          f"{'again: 1st pred ms':>20}")
    for name, r in results.items():
        for kind in ("browser", "python"):
            s = r[kind]
            size = (f"{r['bundle_bytes'] / 1e3:10.1f}{r['browser']['transfer_bytes'] / 1e6:9.2f}" if kind == "browser"
                    else " " * 19)
            print(f"{name if kind == 'browser' else '':<11}{size}{kind:>9}"
                  f"{s['time_to_first_prediction_s'] * 1e3:13.0f}{s['latency_ms_p50']:9.3f}"
                  + (f"{s['repeat_visit_time_to_first_prediction_s'] * 1e3:20.0f}" if kind == "browser" else ""))
    print(json.dumps({
        "benchmark": "edge", "models": results,
        "config": {"quick": args.quick, "runs": runs, "calls": calls, "batch": 1,
                   "browser": "headless Chromium, onnxruntime-web 1.30.0 wasm, fresh profile per run",
                   "python": "fresh process, plain onnxruntime, 1 intra-op thread, no trainfer import",
                   "transfer_bytes": "sum of encodedDataLength over every request of one cold page load",
                   "time_to_first_prediction": "browser: navigation start -> model ready + first call; "
                                               "python: parent time.time() before spawn -> after first run"},
        "env": environment(1),
    }))


if __name__ == "__main__":
    main()
