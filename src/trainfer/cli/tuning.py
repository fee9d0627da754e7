"""The tuning verb: `trainfer tune RECIPE --out STUDY_DIR`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from trainfer.cli._common import JsonFlag, QuietFlag, Terminated, _console, _emit, _verb, app, sigterm_stops
from trainfer.config import _dump_scalar


def _tune_kept(args: dict[str, object]) -> str:
    out = Path(str(args["out"]))
    if (out / "tune.json").is_file():
        return (f"the finished trials are in the study at {out}, the interrupted ones marked FAIL; the same "
                "command continues the study")
    return "no study was written"


@app.command()
@_verb("tune", kept=_tune_kept)
def tune(
    recipe: Annotated[Path | None, typer.Argument(
        help="YAML recipe; its tune: section is the search space (default: a space for its model).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Data to tune on (as `trainfer train --data`): a built-in name or a path; sets data.source.")] = None,
    target: Annotated[str | None, typer.Option(help="Column to predict (CSV/Parquet); sets data.target.")] = None,
    model: Annotated[str | None, typer.Option(help="mlp, cnn, or package.module:function; sets model.name.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per trial; sets train.epochs.")] = None,
    out: Annotated[Path, typer.Option(help="Study directory: study.db, trials/NNNN runs, best.yaml, best/, "
                                           "summary.json. Running the command again continues the study.")] = ...,
    trials: Annotated[int | None, typer.Option(help="Trials this command runs; they add to the study's "
                                                    "(default 30).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Start no trial after this many seconds.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes on the study (default 1); each gets CPUs/W torch threads.")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Study database: sqlite:///FILE (default: STUDY_DIR/study.db), postgresql://USER@HOST/DB, "
             "mysql://..., or journal:FILE. Workers on several machines share one study through it.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe (default), random, or nsga2 (two objectives).")] = None,
    pruner: Annotated[str | None, typer.Option(
        help="median (default), hyperband, or none. Stops poor trials early from their per-epoch "
             "validation metric (one objective only).")] = None,
    objectives: Annotated[str | None, typer.Option(
        help="accuracy (default: the validation metric), accuracy,flops (forward FLOPs per prediction), or "
             "accuracy,latency (the exported model's batch-1 p50): a Pareto front.")] = None,
    pick: Annotated[str | None, typer.Option(
        help="Which trial becomes best.yaml: most-accurate (default), or fastest-within=POINTS, the cheapest "
             "within POINTS of the most accurate (as optimize chooses).")] = None,
    study_name: Annotated[str | None, typer.Option(
        help="A second study in the same directory or database (default: 'default').")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed (default: the recipe's seed).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe value. Repeatable.")] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Tune a recipe's hyperparameters with Optuna: every trial is an ordinary run of the training loop.

    \b
    The search space is the recipe's tune: section, one distribution per dotted recipe key:
      tune:
        train.lr: {log_uniform: [1e-4, 3e-2]}      # floats, even in log scale
        model.dropout: {uniform: [0, 0.5]}         # floats, even
        train.epochs: {int_uniform: [10, 60]}      # integers, both ends included
        train.batch_size: {choice: [32, 64, 128]}  # one of the values (any YAML value)
        model.hidden: {choice: [[128], [256, 128]]}
        trials: 30                                 # settings may sit beside it; flags win

    Without one, a default space for the model is used and printed. Both ends of every range and every
    choice are checked against the recipe before any trial runs; the data source and its split cannot be
    tuned. Trials train on the train split and are judged on the validation split; the test split is read
    once, for the best trial (STUDY_DIR/best). `trainfer run` runs a recipe's tune: step, then optimizes,
    benchmarks and reports the best trial.

    Example: trainfer tune examples/digits-tuned.yaml --out studies/digits --trials 30 --workers 2
    (or, as train takes them: trainfer tune --data data.csv --target label --out studies/mine)
    """
    from trainfer.tuning import tune as tune_fn

    console = _console()
    show = not quiet and not as_json
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if show else None
    # train's shortcuts, as --set overrides written before the user's own (a --set of the same key wins)
    given = {"data.source": data, "data.target": target, "model.name": model, "train.epochs": epochs}
    shortcuts = [f"{k}={_dump_scalar(v)}" for k, v in given.items() if v is not None]
    try:
        with sigterm_stops():
            study = tune_fn(recipe, out=out, trials=trials, timeout=timeout, workers=workers, storage=storage,
                            sampler=sampler, pruner=pruner, objectives=objectives, pick=pick, study_name=study_name,
                            seed=seed, overrides=shortcuts + (set_ or []), quiet=not show, log=log)
    except Terminated:
        print(f"error: terminated: {_tune_kept({'out': out})}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    s = study.summary
    if as_json:
        _emit({k: v for k, v in s.items() if k != "trials"} | {"path": str(study.path)}, True, "")
        return
    from trainfer.reporting.tables import study_table

    console.print(study_table(s))
    c, best = s["counts"], s["best"]
    test = ", ".join(f"{k} {v:.4f}" for k, v in best["test"].items() if k != "loss")
    console.print(f"[bold]study[/] {study.path}: {c['total']} trials ({c['COMPLETE']} complete, {c['PRUNED']} pruned, "
                  f"{c['FAIL']} failed)\nbest trial {best['number']}: val {s['metric']} {best['values'][0]:.4f}, "
                  f"test {test}\nbest recipe: {study.best_recipe}  (trainfer train {study.best_recipe} --out RUN)\n"
                  f"best run: {study.best_run}")
