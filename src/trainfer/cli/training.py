"""Training verbs: train, evaluate, and run (the whole path in one go)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer.cli._common import (
    DataOption,
    JsonFlag,
    ModelOption,
    QuietFlag,
    SeedOption,
    TargetOption,
    Terminated,
    _console,
    _emit,
    _force,
    _train_kept,
    _verb,
    app,
    sigterm_stops,
)

# Sets privacy.epsilon, as --set privacy.epsilon=E would (a recipe's other privacy keys stay).
DpEpsilon = Annotated[float | None, typer.Option(
    "--dp-epsilon", help="Train with DP-SGD (Opacus) to spend at most this ε, e.g. 3 (privacy.epsilon); "
                         "smaller ε is more private (and costs more accuracy).")]


def _dp_set(epsilon: float | None) -> list[str]:
    return [] if epsilon is None else [f"privacy.epsilon={epsilon!r}"]


def _privacy_lines(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    changed = f"{p['model_changes']}\n" if p.get("model_changes") else ""
    return (f"{changed}privacy: (ε {p['epsilon']:.3g}, δ {p['delta']:.2g})-DP by DP-SGD, {p['accountant']} accountant: "
            f"noise multiplier {p['noise_multiplier']:.4g}, clipping norm {p['max_grad_norm']:g}, "
            f"sampling rate {p['sample_rate']:.4g}, {p['steps']} steps\n")


@app.command()
@_verb("train", kept=_train_kept)
def train(
    recipe: Annotated[Path | None, typer.Argument(help="YAML recipe (optional): data, model, train sections.")] = None,
    data: DataOption = None,
    target: TargetOption = None,
    model: ModelOption = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory to create (or to continue with --resume).")] = ...,
    seed: SeedOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")] = False,
    force: Annotated[bool, _force("run directory")] = False,
    dp_epsilon: DpEpsilon = None,
    quiet: QuietFlag = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe value, e.g. --set train.lr=0.01 --set model.hidden=[128,64]. Repeatable.",
    )] = None,
    as_json: JsonFlag = False,
    nproc: Annotated[int | None, typer.Option(
        "--nproc", help="Train with N processes on this machine (torchrun, DistributedDataParallel); "
                        "train.batch_size stays the global batch. For several machines run torchrun yourself.")] = None,
) -> None:
    """Train a model on your data and write a run directory.

    The run holds recipe.yaml, features.json, metrics.jsonl (one line per epoch), checkpoints/
    (one per epoch, for --resume), model.safetensors (the best epoch) and summary.json.

    Example: trainfer train --data digits --model mlp --epochs 30 --out runs/digits --seed 0
    """
    # this process only launches the ranks (each runs this verb without --nproc); --nproc 1, or resuming a run that
    # is already complete, runs here: torchrun would add seconds of start-up and change nothing
    if nproc is not None and _launch(nproc, recipe=recipe, data=data, target=target, model=model, epochs=epochs,
                                     out=out, seed=seed, resume=resume, force=force, dp_epsilon=dp_epsilon,
                                     quiet=quiet, set_=set_, as_json=as_json):
        return
    from trainfer.training import train as train_fn
    from trainfer.training.distributed import is_writer

    if not is_writer():  # a rank other than 0: rank 0 shows progress and prints the result
        quiet, as_json = True, False
    show = not quiet and not as_json and sys.stdout.isatty()
    try:  # SIGTERM stops as Ctrl-C does: the last checkpoint whole, a streamed run's row caches removed
        with sigterm_stops():
            run = train_fn(recipe, out=out, data=data, target=target, model=model, epochs=epochs, seed=seed,
                           resume=resume, force=force, quiet=not show,
                           overrides=[*(set_ or []), *_dp_set(dp_epsilon)])
    except Terminated:
        print(f"error: terminated: {_train_kept({'out': out})}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    if not is_writer():
        return
    s = run.summary
    test = ", ".join(f"{k} {v:.4f}" for k, v in s["test"].items() if k != "loss")
    human = (
        f"[bold]trained[/] {run.recipe.model.name} on {run.recipe.data.source}{_how_trained(s)}: test {test}\n"
        f"best epoch {s['best_epoch']} of {s['epochs_run']}"
        f"{' (early stop)' if s['stopped_early'] else ''}, {s['params']:,} parameters, "
        f"{s['timings']['total_s']:.1f} s, {s['samples_per_s']:,.0f} samples/s\n"
        f"{s['overfitting']['line']}\n{_privacy_lines(s.get('privacy'))}run: {run.path}"
    )
    _emit({"run": str(run.path), **s}, as_json, human)


def _how_trained(summary: dict[str, Any]) -> str:
    """" (streamed, 2 processes x 1 thread, gloo)": the facts that change what a run's figures mean."""
    parts = ["streamed"] if summary.get("data", {}).get("streamed") else []
    procs = summary.get("processes") or {}
    if procs.get("world_size", 1) > 1:
        parts.append(f"{procs['world_size']} processes x {procs['threads_per_process']} "
                     f"thread{'s' if procs['threads_per_process'] != 1 else ''}, {procs['backend']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _launch(nproc: int, *, recipe: Path | None, out: Path, resume: bool, force: bool, set_: list[str] | None,
            dp_epsilon: float | None, quiet: bool, as_json: bool, **shortcuts: Any) -> bool:
    """`train --nproc N`: check up front what a single-process `train` checks before its work (so that a mistake
    costs no torchrun start-up), then run the ranks under torchrun. False: train in this process instead."""
    from trainfer.cli._common import Interrupted
    from trainfer.config import build_recipe
    from trainfer.training import _resume_recipe, launch
    from trainfer.training.outputs import check_run_out, replacing

    launch.check_nproc(nproc)
    check_run_out(out, resume=resume, force=force)
    overrides = [*(set_ or []), *_dp_set(dp_epsilon)]
    names = {"data": "data.source", "target": "data.target", "model": "model.name", "epochs": "train.epochs",
             "seed": "seed"}
    if resume and (out / "recipe.yaml").is_file():  # as `train --resume` does: the recorded recipe, unchanged
        resolved = _resume_recipe(out, recipe, {names[k]: v for k, v in shortcuts.items()}, overrides)
        if (out / "summary.json").is_file():
            return False  # already complete: `train` loads it here
    else:
        resolved = build_recipe(recipe, overrides, **{names[k]: v for k, v in shortcuts.items()})
    if nproc == 1:
        return False
    if resolved.privacy is not None:
        from trainfer.errors import ConfigError

        raise ConfigError("DP-SGD (privacy: / --dp-epsilon) does not run on several processes yet (Opacus's DPDDP "
                          "is not wired in)", hint="train a private model without --nproc")
    args = [str(recipe)] if recipe is not None else []
    for key, value in shortcuts.items():
        if value is not None:
            args += [f"--{key}", str(value)]
    for item in overrides:
        args += ["--set", item]
    args += ["--out", str(out)] + ["--resume"] * resume + ["--quiet"] * quiet + ["--json"] * as_json
    threads = launch.threads_per_process(nproc, resolved.train.threads)
    if (warning := launch.oversubscribed(nproc, threads)) and not as_json:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    try:
        # --force: the old run is moved aside here, once, and put back if the ranks fail
        with replacing(out, force and not resume):
            launch.launch(args, nproc, threads, out)
    except launch.Interrupted as exc:
        raise Interrupted(exc.message) from None
    return True


@app.command()
@_verb("train")
def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[str | None, typer.Option(
        help="Labelled data with the training columns; default: the run's own test split.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Score a run on its test split, or on new labelled data.

    Example: trainfer evaluate runs/digits --json
    """
    from trainfer.training import Run
    from trainfer.training import evaluate as evaluate_fn

    result = evaluate_fn(Run.load(run), data)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    skipped = f", {result['unlabeled']} without a label skipped" if result["unlabeled"] else ""
    _emit(result, as_json, f"{result['data']} ({result['split']}, {result['samples']} samples{skipped}): {shown}")



def _run_kept(args: dict[str, object]) -> str:
    out = Path(str(args["out"])) if args.get("out") else Path("runs") / Path(str(args["recipe"])).stem
    if (out / "run" / "trial.json").is_file():
        return (f"the study at {out / 'study'} and its best trial's run at {out / 'run'} are kept; --resume adds "
                "the recipe's trials to the study and runs the later stages again")
    if (out / "study" / "tune.json").is_file():
        return (f"the finished trials are in the study at {out / 'study'}, the interrupted ones marked FAIL; the "
                "same command with --resume continues it")
    return "the stages that finished kept their outputs; training continues with --resume"


@app.command("run")
@_verb("optimize", "bench", kept=_run_kept)
def run_cmd(
    recipe: Annotated[Path, typer.Argument(
        help="YAML recipe, e.g. examples/digits.yaml; with a tune: section it is tuned first.")],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/<recipe name>).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="optimize's accuracy budget, in points.")] = 0.5,
    full: Annotated[bool, typer.Option("--full", help="Full-length measurements (slower).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training stage; for a tuned "
                                                          "recipe, add its trials to the study.")] = False,
    force: Annotated[bool, _force("run (training run or study, bundle, measurements)")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe value. Repeatable.")] = None,
    dp_epsilon: DpEpsilon = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Everything in one go: train -> optimize -> bench -> report, with a progress line per stage.

    A recipe with a tune: section runs tune -> best -> optimize -> bench -> report instead. The study goes
    to OUT/study, with the settings of the tune: section (e.g. trials: 12, workers: 2; the search-space
    syntax is in `trainfer tune --help`). OUT/run is a copy of the best trial's run, scored on the test
    split once; optimize, bench and report work on it. --resume adds the recipe's trials to the study.

    Example: trainfer run examples/digits.yaml (or examples/digits-tuned.yaml)
    """
    import time

    from rich.console import Console

    from trainfer.pipeline import STAGES, TUNED_STAGES
    from trainfer.pipeline import run as run_fn

    console = Console(stderr=True, highlight=False)  # stage lines on stderr: stdout stays clean for --json
    started = time.perf_counter()

    def on_stage(stage: str, msg: str) -> None:
        if quiet:
            return
        order = TUNED_STAGES if stage == "tune" else STAGES  # the later stages have the same place in both
        console.print(f"[{order.index(stage) + 1}/{len(order)} {stage}] {msg}  "
                      f"({time.perf_counter() - started:.0f} s)", markup=False, soft_wrap=True)

    from trainfer.training.distributed import env_rank

    if (env_rank() or (0, 1))[1] > 1:  # every rank would optimize, bench and report into the same OUT
        from trainfer.errors import ConfigError

        raise ConfigError("`trainfer run` does not run under torchrun (each rank would run every stage)",
                          hint="train with `trainfer train --nproc N` (or torchrun ... -m trainfer train), then "
                               "`trainfer export`, `optimize`, `bench` and `report` on its run")
    try:
        with sigterm_stops():  # a tune stage's workers are stopped, as by Ctrl-C, not left training as orphans
            result = run_fn(recipe, out, overrides=[*(set_ or []), *_dp_set(dp_epsilon)],
                            max_accuracy_drop=max_accuracy_drop, quick=not full,
                            resume=resume, force=force, on_stage=on_stage)
    except Terminated:
        print(f"error: terminated: {_run_kept({'out': out, 'recipe': recipe})}", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("bench", "optimize")}, default=str))
        return
    from trainfer.reporting.tables import bench_table, optimize_table

    c = _console()
    c.print(optimize_table(result["optimize"]))
    c.print(bench_table(result["bench"]))
    study = f"\nstudy: {result['study']}" if "study" in result else ""
    c.print(f"[bold]done[/] in {time.perf_counter() - started:.0f} s\nreport: {result['report']}\n"
            f"infographic: {result['infographic']}\nbundle: {result['bundle']}{study}")
