"""`trainfer run examples/digits.yaml` end to end: wall time against the 5-minute goal, and its outputs.

Usage: python benchmarks/run_pipeline.py [--recipe examples/digits.yaml] [--goal-s 300]
Prints a readable line, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import environment

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples" / "digits.yaml"))
    ap.add_argument("--goal-s", type=float, default=300.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainfer-run-") as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "trainfer.cli", "run", args.recipe, "--out", str(out), "--json"],
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
        run_dir = out / "run"
        files = {name: (run_dir / name).is_file() for name in ("report.html", "infographic.png", "bench.json")}
        bench = json.loads((run_dir / "bench.json").read_text()) if files["bench.json"] else {}
    ok = res.returncode == 0 and all(files.values()) and wall <= args.goal_s
    print(f"trainfer run {Path(args.recipe).name}: {wall:.0f} s (goal <= {args.goal_s:.0f} s), files {files}")
    print(json.dumps({
        "benchmark": "run_pipeline", "recipe": args.recipe, "wall_s": wall, "goal_s": args.goal_s,
        "exit_code": res.returncode, "files": files, "pass": ok,
        "chosen_variant": (bench.get("inference") or {}).get("variant"),
        "env": environment(None),
    }))


if __name__ == "__main__":
    main()
