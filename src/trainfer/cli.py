"""The `trainfer` command line: one verb per phase, the same names as the Python API.

User mistakes print ``error: ...`` (and ``hint: ...``) on stderr and exit with code 2, without a
traceback. Heavy libraries are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import atexit
import functools
import gc
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer import _variants
from trainfer._imports import extra_for_missing, require_extras
from trainfer.errors import TrainferError

app = typer.Typer(
    name="trainfer",
    help="Train a model, hand it off to a fast torch-free inference bundle, and measure both phases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
# One rule for every verb: progress can be silenced with -q, an existing output is replaced only with --force,
# and --threads means the same thing with the same default everywhere.
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display (results are still printed).")]
THREADS_DEFAULT = "default: the bundle's recommended threads when it records them, else every CPU this process may use"


def _force(what: str) -> Any:
    return typer.Option("--force", help=f"Replace an existing {what} at --out (without it, an existing one is "
                                        "refused before any work starts).")


def _threads(what: str) -> Any:
    # metavar: typer's "<int range>" widened the metavar column and cut long option names at 80 columns
    return typer.Option(help=f"{what} ({THREADS_DEFAULT}).", min=1, metavar="<int>")


def _spinner(message: str, show: bool) -> Any:
    """A spinner on stderr while a verb works, when a person watches (stderr is a terminal)."""
    if not show or not sys.stderr.isatty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True, highlight=False).status(message, spinner="dots")


def _console() -> Any:
    """stdout console; wide when not a terminal, so tables in logs are not squeezed to 80 columns."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class Interrupted(TrainferError):
    """Ctrl-C during a command; the message says what was kept."""


def _verb(*extras: str, kept: Callable[[dict[str, Any]], str] | None = None) -> Callable[[Any], Any]:
    """Wrap a command: check its pip extras before any work (an `error:` naming the extra, not a traceback
    from deep inside), and turn Ctrl-C into one line saying what was kept (``kept(arguments)``)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            require_extras(*extras)
            try:
                return fn(**kwargs)
            except KeyboardInterrupt:
                raise Interrupted("interrupted: " + (kept(kwargs) if kept else "nothing was written")) from None
        return command
    return wrap


def _train_kept(args: dict[str, Any]) -> str:
    out = Path(args["out"])
    if (out / "summary.json").is_file():  # --force put the finished run back: the new one was dropped
        return f"the finished run at {out} is unchanged; the new run was discarded"
    try:
        epoch = json.loads((out / "checkpoints" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint yet in {out}; `trainfer train --out {out} --resume` starts it again"
    return f"last checkpoint epoch {epoch} in {out}; `trainfer train --out {out} --resume` continues"


def _nothing_at(option: str, what: str) -> Callable[[dict[str, Any]], str]:
    return lambda args: f"no {what} written at {args[option]} (writes are atomic)"


def _emit(record: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(record, default=str))
    else:
        _console().print(human)


@app.command()
@_verb("train", kept=_train_kept)
def train(
    recipe: Annotated[Path | None, typer.Argument(help="YAML recipe (optional): data, model, train sections.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Built-in dataset (digits, iris, wine, breast_cancer, synthetic-classification, "
             "synthetic-regression, synthetic-images) or a path: .csv, .parquet, .npz, or an image folder "
             "root/<class>/*.png.")] = None,
    target: Annotated[str | None, typer.Option(help="Column to predict (CSV/Parquet).")] = None,
    model: Annotated[str | None, typer.Option(help="mlp, cnn, or a custom builder package.module:function.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory to create (or to continue with --resume).")] = ...,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, initial weights and batch order.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")] = False,
    force: Annotated[bool, _force("run directory")] = False,
    quiet: QuietFlag = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe value, e.g. --set train.lr=0.01 --set model.hidden=[128,64]. Repeatable.",
    )] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a model on your data and write a run directory.

    The run holds recipe.yaml, features.json, metrics.jsonl (one line per epoch), checkpoints/
    (one per epoch, for --resume), model.safetensors (the best epoch) and summary.json.

    Example: trainfer train --data digits --model mlp --epochs 30 --out runs/digits --seed 0
    """
    from trainfer.training import train as train_fn

    show = not quiet and not as_json and sys.stdout.isatty()
    run = train_fn(recipe, out=out, data=data, target=target, model=model, epochs=epochs, seed=seed,
                   resume=resume, force=force, quiet=not show, overrides=set_ or [])
    s = run.summary
    test = ", ".join(f"{k} {v:.4f}" for k, v in s["test"].items() if k != "loss")
    human = (
        f"[bold]trained[/] {run.recipe.model.name} on {run.recipe.data.source}: test {test}\n"
        f"best epoch {s['best_epoch']} of {s['epochs_run']}"
        f"{' (early stop)' if s['stopped_early'] else ''}, {s['params']:,} parameters, "
        f"{s['timings']['total_s']:.1f} s, {s['samples_per_s']:,.0f} samples/s\n"
        f"{s['overfitting']['line']}\nrun: {run.path}"
    )
    _emit({"run": str(run.path), **s}, as_json, human)


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


@app.command()
@_verb("export", kept=_nothing_at("out", "bundle was"))
def export(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")] = ...,
    force: Annotated[bool, _force("bundle")] = False,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Export a run to a lossless ONNX inference bundle (BatchNorm folded, parity checked).

    The bundle holds model.onnx and manifest.json (schema, preprocessing, labels, metrics, provenance,
    sha256 of every file). Loading it needs numpy and onnxruntime, not torch.

    Example: trainfer export runs/digits --out bundles/digits
    """
    from trainfer.exporting import export as export_fn
    from trainfer.runtime import read_manifest

    with _spinner("exporting and checking parity", show=not quiet and not as_json):
        path = export_fn(run, out, force=force)
    m = read_manifest(path)
    human = (f"[bold]exported[/] {run} -> {path} ({m['onnx']['exporter']} exporter, opset {m['onnx']['opset']}, "
             f"{m['onnx']['bn_folded']} BatchNorm folded)\nparity on {m['parity']['samples']} test samples: "
             f"max abs diff {m['parity']['max_abs_diff']:.2e}")
    if "argmax_agreement" in m["parity"]:
        human += f", argmax agreement {m['parity']['argmax_agreement']:.4f}"
    _emit({"bundle": str(path), "onnx": m["onnx"], "parity": m["parity"], "files": m["files"]}, as_json, human)


@app.command(epilog="Variants (--variant NAME):\n\n" + _variants.help_text())
@_verb("optimize", kept=_nothing_at("out", "bundle was"))
def optimize(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write (the chosen variant).")] = ...,
    max_accuracy_drop: Annotated[float, typer.Option(
        help="Budget: accuracy drop in percentage points on the validation split (regression: % rmse increase).",
        min=0.0)] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Deployment batch size the speed is judged at.", min=1)] = 1,
    variants: Annotated[list[str] | None, typer.Option(
        "--variant", help="Only these variants (repeatable; listed below); onnx-fp32 is always included.")] = None,
    threads: Annotated[int | None, _threads("onnxruntime and torch threads for every measurement")] = None,
    full: Annotated[bool, typer.Option("--full", help="Longer measurements (1,000 calls and 10 s each).")] = False,
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs of fine-tuning after pruning.", min=1)] = 5,
    force: Annotated[bool, _force("bundle")] = False,
    quiet: QuietFlag = False,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Every column of the table (size, validation accuracy, p90, params, FLOPs); the default "
                       "fits 100 terminal columns.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Try int8 quantization, structured pruning and both; keep the fastest variant within the budget.

    Every variant is measured with one harness: accuracy on the validation split (used to choose) and
    the test split (reported), latency p50/p90 at batch 1, throughput at batch 64, size, parameters
    and FLOPs. A variant must beat onnx-fp32 beyond measurement noise to replace it.

    Example: trainfer optimize runs/digits --out bundles/digits-fast --max-accuracy-drop 0.5
    """
    from rich.console import Console

    from trainfer.exporting.optimize import optimize as optimize_fn

    console = Console(stderr=True, highlight=False)
    show = not quiet and not as_json and sys.stdout.isatty()
    with console.status("optimizing", spinner="dots") if show else nullcontext() as status:
        def log(msg: str) -> None:
            if status is not None:
                status.update(msg)

        record = optimize_fn(run, out, max_accuracy_drop=max_accuracy_drop, batch_size=batch_size,
                             variants=variants, threads=threads, quick=not full, fine_tune_epochs=fine_tune_epochs,
                             force=force, log=log)
    if as_json:
        print(json.dumps(record, default=str))
        return
    from trainfer.reporting.tables import STATUS, optimize_table

    console = _console()
    console.print(optimize_table(record, wide=wide))
    for r in record["variants"]:
        if r.get("reason"):
            console.print(f"{STATUS[r['status']]} {r['name']}: {r['reason']}")
    console.print(f"[bold]chosen:[/] {record['chosen']} — {record['reason']}\n"
                                   f"bundle: {record['bundle']} (recommended threads: {record['recommended_threads']})")


@app.command()
@_verb(kept=_nothing_at("out", "predictions were"))
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (from export or optimize).")],
    input: Annotated[Path, typer.Argument(help="CSV, Parquet, .npz (array X), an image, or a folder of images.")],
    out: Annotated[Path, typer.Option(help="Where to write predictions: .csv or .json.")] = Path("predictions.csv"),
    force: Annotated[bool, _force("predictions file")] = False,
    threads: Annotated[int | None, _threads("onnxruntime threads")] = None,
    chunk_size: Annotated[int, typer.Option(help="Rows per chunk; bounds memory.", min=1)] = 4096,
    id_column: Annotated[str | None, typer.Option(help="Input column copied first into the output to identify "
                                                       "rows (default: as described above).")] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Batch inference from a file: one output row per input row, in input order.

    Columns written (.csv; .json: the same as records): the id column when the
    input has one (the one training identified rows with: data.id_column, or
    a column named id in any case; --id-column names another; path for images),
    then prediction (the label, or the value), then prob_<label> per class
    (classification). No other input column is copied; extra columns are
    ignored (the target too).

    The model's columns are found by name, in any order; a missing one is an
    error naming it. Missing values (empty, NA, NaN, null) are imputed as in
    training: the median, or the most frequent category. A category never seen
    in training goes to the model's unknown slot. An infinite or non-numeric
    number is an error naming its row and column.

    --out is written under a temporary name, then renamed: never half-written.
    An existing --out is replaced only with --force.

    Example: trainfer predict bundles/digits new_rows.csv --out preds.csv
    """
    from trainfer.runtime.files import predict as predict_fn

    options: dict[str, Any] = {"threads": threads, "chunk_size": chunk_size, "force": force, "id_column": id_column}
    if quiet or as_json or not sys.stdout.isatty():
        report = predict_fn(bundle, input, out, **options)
    else:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("predicting", total=None)
            report = predict_fn(bundle, input, out, **options,
                                on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    _emit(report, as_json, f"[bold]predicted[/] {report['rows']} rows -> {report['out']}")


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


@app.command()
@_verb("report", kept=lambda args: "report.html and infographic.png were not written")
def report(
    run: Annotated[Path, typer.Argument(help="A run directory with bench.json (run `trainfer bench` first).")],
    out: Annotated[Path | None, typer.Option(help="Directory for report.html and infographic.png "
                                                  "(default: the run).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write report.html (self-contained) and infographic.png: training vs inference, measured.

    Example: trainfer report runs/digits
    """
    from trainfer.reporting import report as report_fn

    paths = report_fn(run, out)
    _emit({k: str(v) for k, v in paths.items()}, as_json,
          f"[bold]report[/] {paths['report']}\n[bold]infographic[/] {paths['infographic']}")


@app.command("run")
@_verb("optimize", "bench",
       kept=lambda args: "the stages that finished kept their outputs; training continues with --resume")
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. examples/digits.yaml.")],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/<recipe name>).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="optimize's accuracy budget, in points.")] = 0.5,
    full: Annotated[bool, typer.Option("--full", help="Full-length measurements (slower).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training stage.")] = False,
    force: Annotated[bool, _force("run (training run, bundle, measurements)")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe value. Repeatable.")] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Everything in one go: train -> optimize -> bench -> report, with a progress line per stage.

    Example: trainfer run examples/digits.yaml
    """
    import time

    from rich.console import Console

    from trainfer.pipeline import STAGES
    from trainfer.pipeline import run as run_fn

    console = Console(stderr=True, highlight=False)  # stage lines on stderr: stdout stays clean for --json
    started = time.perf_counter()

    def on_stage(stage: str, msg: str) -> None:
        if quiet:
            return
        console.print(f"[{STAGES.index(stage) + 1}/{len(STAGES)} {stage}] {msg}  "
                      f"({time.perf_counter() - started:.0f} s)")

    result = run_fn(recipe, out, overrides=set_ or [], max_accuracy_drop=max_accuracy_drop, quick=not full,
                    resume=resume, force=force, on_stage=on_stage)
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("bench", "optimize")}, default=str))
        return
    from trainfer.reporting.tables import bench_table, optimize_table

    c = _console()
    c.print(optimize_table(result["optimize"]))
    c.print(bench_table(result["bench"]))
    c.print(f"[bold]done[/] in {time.perf_counter() - started:.0f} s\nreport: {result['report']}\n"
            f"infographic: {result['infographic']}\nbundle: {result['bundle']}")


@app.command()
@_verb("serve")
def serve(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (from export or optimize).")],
    name: Annotated[str | None, typer.Option(help="Model name in the URLs (default: bundle folder name).")] = None,
    host: Annotated[str, typer.Option(help="Interface; loopback by default, 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (1-65535); checked free before start-up.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the bundle).")] = 1,
    threads: Annotated[int | None, _threads("onnxruntime threads per process")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Rows per batch at most.")] = 32,
    max_delay_ms: Annotated[float, typer.Option(
        help="Extra wait for more requests before a batch runs; 0 runs as soon as the model is free, "
             "batching the requests that arrived meanwhile.")] = 0.0,
    max_queue: Annotated[int, typer.Option(help="Queued requests at most; beyond it: 503.")] = 256,
    timeout_ms: Annotated[float, typer.Option(help="Longest wait for the model; beyond it: 504.")] = 1000.0,
    api_key_file: Annotated[Path | None, typer.Option(help="File with one API key per line: clients send "
                                                         "'Authorization: Bearer KEY'.")] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body; beyond it: 413.")] = 8.0,
    header_timeout_s: Annotated[float, typer.Option(
        help="A request's headers must arrive within this long of the connection opening (or of the "
             "previous answer); else the connection is closed.")] = 10.0,
    body_timeout_s: Annotated[float, typer.Option(
        help="A request's whole body must arrive within this long of its headers (else 408), and a client "
             "may stop reading a large answer for at most this long (else the connection is dropped).")] = 30.0,
    keep_alive_s: Annotated[float, typer.Option(help="An idle kept-alive connection is closed after this long.")] = 5.0,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help=(
        "One line per request on stdout: time, client, request line, status, milliseconds "
        "(written in bulk every 0.2 s)."))] = True,
) -> None:
    """Serve a bundle over HTTP: Open Inference Protocol v2 (KServe/Triton clients work) and POST /predict.

    Endpoints: /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME, /v2/models/NAME/ready,
    /v2/models/NAME/infer (JSON or binary tensors), /predict, /metrics (Prometheus), /docs.
    Requests are batched dynamically; no endpoint loads models or changes the server.

    Inputs: a table of numbers takes one FP32 tensor "input" of rows x columns, the columns in training
    order (GET /v2/models/NAME lists them under parameters.columns; /predict takes them by name);
    a table with strings takes one tensor per column; images take UINT8 "input" of n x h x w x 3.
    A missing number (NaN, null or "NaN") is imputed as in training; an infinity is refused.
    Every limit and timeout must be above 0; a busy --port is an error before start-up.

    Example: trainfer serve bundles/digits --port 8000
    """
    from trainfer.runtime import load
    from trainfer.serving import serve as serve_fn

    load(bundle)  # verify the bundle before binding the port: a bad bundle is a clear error, not a crash loop
    serve_fn(bundle, name=name, host=host, port=port, workers=workers, threads=threads, api_key_file=api_key_file,
             max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_ms=timeout_ms,
             max_body_mb=max_body_mb, header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
             keep_alive_s=keep_alive_s, access_log=access_log)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script. Every way a command can fail because of its input or its
    environment ends in one ``error:`` line (and a ``hint:``) on stderr: exit 2, or 130 for Ctrl-C."""
    # At exit, the interpreter's last garbage collections walk every object torch created (~0.25 s per
    # command); frozen objects are skipped. atexit handlers still run, files are still flushed and closed.
    atexit.register(gc.freeze)
    ce = _click_exceptions()
    try:
        code = app(args=argv, standalone_mode=False)
    except ce.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except ce.UsageError as exc:
        # click's own boxed panel would be a second error format; one line, and where to read more
        where = exc.ctx.command_path if exc.ctx else "trainfer"
        _fail(exc.format_message(), f"see `{where} --help`")
    except ce.ClickException as exc:
        _fail(exc.format_message(), None)
    except typer.Abort:
        _fail("interrupted", None, code=130)
    except Interrupted as exc:
        _fail(exc.message, exc.hint, code=130)
    except TrainferError as exc:
        _fail(exc.message, exc.hint)
    except ModuleNotFoundError as exc:
        extra = extra_for_missing(exc)
        if extra is None:
            raise  # not an optional dependency of ours: a bug, keep the traceback
        _fail(f"{exc.name} is needed for this and is not installed", f"pip install 'trainfer[{extra}]'")
    except OSError as exc:
        # Writers turn their OS errors into OutputError; one that slips through still names its file.
        if exc.filename is None:
            raise
        _fail(f"{exc.filename}: {exc.strerror or exc}", None)
    except KeyboardInterrupt:
        _fail("interrupted", None, code=130)
    if isinstance(code, int) and code:
        sys.exit(code)


def _click_exceptions() -> Any:
    # typer >= 0.22 carries its own copy of click, whose exceptions are not click's; older typer uses click
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, hint: str | None, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
