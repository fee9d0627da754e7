"""Cold start in a fresh process: load + first prediction time, and the process's peak RSS (VmHWM)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import trainfer
kind, path, sample = sys.argv[1], sys.argv[2], sys.argv[3]
x = json.load(open(sample)) if sample.endswith(".json") else np.load(sample, allow_pickle=False)
t1 = time.perf_counter()
model = trainfer.load(path) if kind == "bundle" else trainfer.Run.load(path)
t2 = time.perf_counter()
model.predict(x)
t3 = time.perf_counter()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_prediction_s": t3 - t2,
                  "time_to_first_prediction_s": t3 - t0, "peak_rss_mb": hwm / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def cold_start(kind: str, path: Path, sample: Any, repeats: int = 3) -> dict[str, Any]:
    """Median over ``repeats`` fresh interpreters of import, load, first prediction and peak RSS.

    ``sample``: one raw input, as uint8 images (ndarray) or table rows (a list of dicts).
    VmHWM is the child's own high-water mark (ru_maxrss would include the parent's, across exec).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(sample, np.ndarray):
            sample_path = Path(tmp) / "sample.npy"
            np.save(sample_path, sample, allow_pickle=False)
        else:
            sample_path = Path(tmp) / "sample.json"
            sample_path.write_text(json.dumps(sample, default=_plain))
        runs = []
        for _ in range(repeats):
            res = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path), str(sample_path)],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k != "torch_imported"}
    out["torch_imported"] = any(r["torch_imported"] for r in runs)
    out["repeats"] = repeats
    return out


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)
