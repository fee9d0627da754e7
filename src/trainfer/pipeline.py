"""`trainfer run RECIPE`: train -> optimize -> bench -> report, one stage after another.

Each stage writes into the output directory as it finishes, so a failure late keeps what came before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer.config import build_recipe

STAGES = ("train", "optimize", "bench", "report")


def run(recipe: str | Path, out: str | Path | None = None, *, overrides: list[str] | None = None,
        max_accuracy_drop: float = 0.5, quick: bool = True, resume: bool = False, force: bool = False,
        on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run every stage; returns paths and headline figures. ``on_stage(stage, message)`` reports progress.

    Layout of ``out``: run/ (the training run, with bench.json, report.html, infographic.png) and
    run/bundle/ (the optimized bundle).
    """
    from trainfer.benching import bench
    from trainfer.exporting.optimize import optimize
    from trainfer.reporting import report
    from trainfer.training import train

    say = on_stage or (lambda _stage, _msg: None)
    resolved = build_recipe(recipe, overrides)
    out = Path(out) if out else Path("runs") / Path(str(recipe)).stem
    run_dir, bundle_dir = out / "run", out / "run" / "bundle"

    say("train", f"training {resolved.model.name} on {resolved.data.source}")
    trained = train(resolved, out=run_dir, resume=resume, force=force, quiet=True)
    say("optimize", "building and measuring variants")
    record = optimize(trained, bundle_dir, max_accuracy_drop=max_accuracy_drop, quick=quick, force=True,
                      log=lambda m: say("optimize", m))
    say("bench", "measuring both phases (LoadGen, cold start, FLOPs, energy)")
    measured = bench(run_dir, bundle=bundle_dir, quick=quick, log=lambda m: say("bench", m))
    say("report", "writing report.html and infographic.png")
    paths = report(run_dir)
    return {"out": str(out), "run": str(run_dir), "bundle": str(bundle_dir), "optimize": record,
            "bench": measured, "report": str(paths["report"]), "infographic": str(paths["infographic"])}
