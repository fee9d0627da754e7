"""Measuring verbs: bench both phases, report them side by side."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer.cli._common import JsonFlag, QuietFlag, _console, _emit, _threads, _verb, app


@app.command()
@_verb("bench", kept=lambda args: "bench.json was not written")
def bench(
    target: Annotated[Path, typer.Argument(help="A finished run directory, or a bundle.")],
    bundle: Annotated[Path | None, typer.Option(
        help="For a run: the bundle to measure (default: RUN/bundle, else a fresh onnx-fp32 export).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Short LoadGen runs (about a minute in all).")] = False,
    threads: Annotated[int | None, _threads("onnxruntime and torch threads")] = None,
    target_accuracy: Annotated[float | None, typer.Option(
        help="Report time-to-target: wall clock until validation accuracy reaches this value.")] = None,
    seeds: Annotated[int, typer.Option(help="With --target-accuracy: retrain with N seeds, olympic mean.",
                                       min=1)] = 1,
    server_latency_ms: Annotated[float | None, typer.Option(
        help="p99 bound for the Server scenario (default: 20x SingleStream p50, at least 10 ms).")] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Measure training and inference side by side; write bench.json (into a run, or beside a bundle).

    Inference runs MLPerf LoadGen's SingleStream, Offline (batch 1 to 256) and Server scenarios on the
    bundle and, for a run, on torch eager too; plus cold start and peak memory in fresh processes. For a
    run, training throughput, FLOPs (forward and forward+backward), time-to-target and energy.

    Example: trainfer bench runs/digits --quick
    """
    from trainfer.benching import bench as bench_fn
    from trainfer.benching import bench_path

    console = _console()
    show = not quiet and not as_json and sys.stdout.isatty()
    with console.status("benchmarking") if show else nullcontext() as status:
        record = bench_fn(target, bundle=bundle, quick=quick, threads=threads, target_accuracy=target_accuracy,
                          seeds=seeds, server_latency_ms=server_latency_ms,
                          log=lambda m: status.update(m) if status is not None else None)
    if as_json:
        print(json.dumps(record, default=str))
        return
    from trainfer.reporting.tables import bench_table

    console.print(bench_table(record))
    console.print(f"written: {bench_path(Path(target))}")


def _report_kept(args: dict[str, Any]) -> str:
    from trainfer.reporting.study import is_study_dir

    if is_study_dir(Path(args["run"])):
        return "report.html was not written (writes are atomic)"
    return "report.html and infographic.png were not written"


@app.command()
@_verb("report", kept=_report_kept)
def report(
    run: Annotated[Path, typer.Argument(help="A run directory with bench.json (run `trainfer bench` first), or a "
                                             "study directory made by `trainfer tune`.")],
    out: Annotated[Path | None, typer.Option(help="Directory for the report (default: the run or study "
                                                  "directory).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a self-contained report.html (SVG charts inside; the page loads nothing from elsewhere).

    A run directory (with bench.json): training vs inference, measured, and infographic.png.
    A study directory (made by `trainfer tune`): optimization history, parameter importances,
    and the Pareto front (accuracy against FLOPs or latency) when the study has two objectives.
    A study's report is drawn from its summary.json alone: neither Optuna nor the database is needed.
    The study's best run (STUDY_DIR/best, once benchmarked) shows the study's charts in its report too.

    Example: trainfer report runs/digits; trainfer report studies/digits
    """
    from trainfer.reporting import report as report_fn

    paths = report_fn(run, out)
    _emit({k: str(v) for k, v in paths.items()}, as_json,
          "\n".join(f"[bold]{k}[/] {v}" for k, v in paths.items()))
