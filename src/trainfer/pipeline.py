"""`trainfer run RECIPE`: [tune ->] train -> optimize -> bench -> report, one stage after another.

Each stage writes into the output directory as it finishes, so a failure late keeps what came before.
A recipe with a `tune:` section is tuned instead of trained: the study goes to OUT/study, and the best
trial's run (already trained, and scored on the test split once) is what the later stages work on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, make_temp_dir, write_json
from trainfer._imports import require_extras
from trainfer.config import Recipe, build_recipe
from trainfer.errors import ConfigError, OutputError, RunError

STAGES = ("train", "optimize", "bench", "report")
TUNED_STAGES = ("tune", "optimize", "bench", "report")


def stages(recipe: Recipe) -> tuple[str, ...]:
    """The stages `run` goes through for this recipe."""
    return TUNED_STAGES if recipe.tune is not None else STAGES


def run(recipe: str | Path, out: str | Path | None = None, *, overrides: list[str] | None = None,
        max_accuracy_drop: float = 0.5, quick: bool = True, resume: bool = False, force: bool = False,
        on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run every stage; returns paths and headline figures. ``on_stage(stage, message)`` reports progress.

    Layout of ``out``: run/ (the training run, with bench.json, report.html, infographic.png) and
    run/bundle/ (the optimized bundle). A tuned recipe adds study/ (the study dir `trainfer tune` writes),
    and run/ is then a copy of the best trial's run (study/best). ``resume`` continues the interrupted
    training run, or adds the recipe's trials to the study.

    Example: ``trainfer.run("examples/digits-tuned.yaml", "runs/digits-tuned")["report"]``.
    """
    from trainfer.benching import bench
    from trainfer.exporting.optimize import optimize
    from trainfer.reporting import report
    from trainfer.training import Run, train

    say = on_stage or (lambda _stage, _msg: None)
    resolved = build_recipe(recipe, overrides)
    out = Path(out) if out else Path("runs") / Path(str(recipe)).stem
    run_dir, bundle_dir = out / "run", out / "run" / "bundle"
    result: dict[str, Any] = {"out": str(out)}

    if resolved.tune is not None:
        require_extras("tune")  # optuna missing: one error before the stage line and OUT are written
        study = _tune_stage(resolved, out, resume=resume, force=force, say=say)
        result["study"] = str(study.path)
        trained = Run.load(run_dir)
    else:
        say("train", f"training {resolved.model.name} on {resolved.data.source}")
        trained = train(resolved, out=run_dir, resume=resume, force=force, quiet=True)
    say("optimize", "building and measuring variants")
    record = optimize(trained, bundle_dir, max_accuracy_drop=max_accuracy_drop, quick=quick, force=True,
                      log=lambda m: say("optimize", m))
    say("bench", "measuring both phases (LoadGen, cold start, FLOPs, energy)")
    measured = bench(run_dir, bundle=bundle_dir, quick=quick, log=lambda m: say("bench", m))
    say("report", "writing report.html and infographic.png")
    paths = report(run_dir)
    return {**result, "run": str(run_dir), "bundle": str(bundle_dir), "optimize": record, "bench": measured,
            "report": str(paths["report"]), "infographic": str(paths["infographic"])}


def _tune_stage(recipe: Recipe, out: Path, *, resume: bool, force: bool, say: Callable[[str, str], None]) -> Any:
    """tune into out/study, then copy the best trial's run to out/run (what optimize, bench and report use)."""
    from trainfer.tuning import tune

    study_dir, run_dir = out / "study", out / "run"
    _check_tuned_out(study_dir, run_dir, resume=resume, force=force)
    with _replacing([study_dir, run_dir], force):
        say("tune", f"tuning {recipe.model.name} on {recipe.data.source} into {study_dir}")
        study = tune(recipe, out=study_dir, quiet=True, log=lambda m: say("tune", _one_line(m)),
                     on_progress=lambda m: say("tune", m))
        best, counts = study.best, study.summary["counts"]
        test = ", ".join(f"{k} {v:.4f}" for k, v in best.get("test", {}).items() if k != "loss")
        say("tune", f"{counts['total']} trials ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
                    f"{counts['FAIL']} failed); best trial {best['number']}: val {study.summary['metric']} "
                    f"{best['values'][0]:.4f}, test {test}; its run -> {run_dir}")
        _copy_run(study.best_run, run_dir, study.path)
    return study


def _one_line(message: str) -> str:
    """tune's multi-line messages ("search space:" and a line per key) as one stage line."""
    head, *rest = message.splitlines()
    return head + (" " + "; ".join(line.strip() for line in rest) if rest else "")


def _check_tuned_out(study_dir: Path, run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse, before any work, what `run` must not overwrite or cannot write."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other (continue the study, or start again?)",
                          hint="pass --resume to add trials to the study at --out, or --force to tune from scratch")
    for path in (study_dir, run_dir):
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path} is a file; `run` writes a directory there", hint="choose another --out")
    taken = [p for p in (study_dir, run_dir) if p.is_dir() and any(p.iterdir())]
    if taken and not (resume or force):
        raise RunError(f"{taken[0]} already exists and is not empty",
                       hint="pass --resume to add the recipe's trials to the study, --force to tune again from "
                            "scratch, or choose another --out")
    if resume and run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "trial.json").is_file():
        raise OutputError(f"--resume continues a tuned run, and {run_dir} holds something else (no trial.json)",
                          hint="choose another --out")
    check_output(run_dir, kind="dir", force=True)  # also the parent: read-only, no permission, a file in the way


@contextlib.contextmanager
def _replacing(paths: list[Path], force: bool) -> Iterator[None]:
    """With ``force``, existing outputs are moved aside and deleted once the stage succeeds (put back if not)."""
    aside: list[tuple[Path, Path]] = []
    if force:
        for p in paths:
            if p.exists():
                old = p.with_name(f".{p.name}.replaced")
                shutil.rmtree(old, ignore_errors=True)
                p.rename(old)
                aside.append((p, old))
    try:
        yield
    except BaseException:
        for p, old in aside:
            shutil.rmtree(p, ignore_errors=True)
            old.rename(p)
        raise
    for _, old in aside:
        shutil.rmtree(old, ignore_errors=True)


def _copy_run(best: Path, run_dir: Path, study: Path) -> None:
    """out/run becomes a copy of the best trial's run; its trial.json says which study it came from."""
    tmp = make_temp_dir(run_dir.parent, run_dir.name)
    try:
        shutil.copytree(best, tmp, dirs_exist_ok=True)
        marker = tmp / "trial.json"
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        # relative, so the pair can be moved together (the report finds the study's charts through it)
        write_json(marker, {**info, "study": os.path.relpath(study.resolve(), run_dir.resolve())})
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the previous best's run, with its bundle and measurements
        tmp.rename(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
