"""Inference verbs: export, optimize, predict and serve a bundle."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer import _variants
from trainfer.cli._common import (
    JsonFlag,
    QuietFlag,
    _console,
    _emit,
    _force,
    _nothing_at,
    _spinner,
    _threads,
    _verb,
    app,
)


def _encrypt_key() -> Any:
    return typer.Option(envvar="TRAINFER_BUNDLE_KEY", show_envvar=False, help=(
        "Bundle key file (32 bytes: `trainfer keys generate --symmetric`); writes model.onnx.enc (AES-256-GCM) "
        "and never the plaintext graph. Default: the file named by TRAINFER_BUNDLE_KEY, when set."))


def _trust() -> Any:
    return typer.Option(help="Public key file: refuse the bundle unless it is signed by this key and unchanged "
                             "since (`trainfer sign`).")


def _key_bytes(path: Path | None, option: str) -> bytes | None:
    """A key file read once, with its option's name in any error (and a warning for loose permissions)."""
    if path is None:
        return None
    from trainfer.runtime.keys import symmetric_key

    return symmetric_key(path, option)


@app.command()
@_verb("export", kept=_nothing_at("out", "bundle was"))
def export(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")] = ...,
    force: Annotated[bool, _force("bundle")] = False,
    encrypt_key: Annotated[Path | None, _encrypt_key()] = None,
    web: Annotated[Path | None, typer.Option(help=(
        "Also build the bundle's browser page into this directory (as `trainfer web BUNDLE --out DIR`; "
        "--force replaces an existing site there too)."))] = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Export a run to a lossless ONNX inference bundle (BatchNorm folded, parity checked).

    The bundle holds model.onnx and manifest.json (schema, preprocessing, labels, metrics, provenance,
    sha256 of every file). Loading it needs numpy and onnxruntime, not torch. With --encrypt-key it holds
    model.onnx.enc instead, and the plaintext graph is never written to disk.

    Example: trainfer export runs/digits --out bundles/digits
    """
    from trainfer.exporting import export as export_fn
    from trainfer.runtime import read_manifest

    if web is not None:
        _check_web(web, out, force, encrypt_key)
    with _spinner("exporting and checking parity", show=not quiet and not as_json):
        path = export_fn(run, out, force=force, encrypt_key=encrypt_key)
    m = read_manifest(path)
    site = None
    if web is not None:
        from trainfer.web import build_site

        with _spinner("building the web page", show=not quiet and not as_json):
            site = build_site(path, web, force=force)
    human = (f"[bold]exported[/] {run} -> {path} ({m['onnx']['exporter']} exporter, opset {m['onnx']['opset']}, "
             f"{m['onnx']['bn_folded']} BatchNorm folded)\nparity on {m['parity']['samples']} test samples: "
             f"max abs diff {m['parity']['max_abs_diff']:.2e}")
    if "argmax_agreement" in m["parity"]:
        human += f", argmax agreement {m['parity']['argmax_agreement']:.4f}"
    if "encryption" in m:  # say so: TRAINFER_BUNDLE_KEY set in the environment encrypts without any flag
        enc = m["encryption"]
        human += (f"\n[bold]encrypted[/] {enc['file']} ({enc['algorithm']}, key id {enc['key_id']}): "
                  "predict --key / serve --key-file need the key")
    if site is not None:
        human += (f"\n[bold]web page[/] {site['site']} ({site['bytes'] / 1e6:.1f} MB with onnxruntime-web "
                  f"{site['onnxruntime_web']}): `trainfer web {path} --serve` or any static host")
    _emit({"bundle": str(path), "onnx": m["onnx"], "parity": m["parity"], "files": m["files"],
           **({"encryption": m["encryption"]} if "encryption" in m else {}),
           **({"web": site} if site is not None else {})}, as_json, human)


def _check_web(web: Path, out: Path, force: bool, encrypt_key: Path | None) -> None:
    """--web's problems before any export work: an encrypted bundle (its key would ship to every visitor),
    a --web that cannot be written, the same directory as --out, no npm to install onnxruntime-web with."""
    from trainfer.errors import ConfigError
    from trainfer.web import ensure_ort_web
    from trainfer.web.site import check_site_out

    if encrypt_key is not None:
        raise ConfigError("--web builds a page that runs model.onnx in the browser, and --encrypt-key (or "
                          "TRAINFER_BUNDLE_KEY) encrypts it: the page would have to ship the key",
                          hint="export once without the key for the web, or drop --web")
    if web.absolute() == out.absolute():
        raise ConfigError(f"--web {web} is the bundle's --out; the site needs its own directory",
                          hint=f"e.g. --web {out.parent / (out.name + '-web')}")
    check_site_out(web, force)
    ensure_ort_web()


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
    encrypt_key: Annotated[Path | None, _encrypt_key()] = None,
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
                             force=force, log=log, encrypt_key=encrypt_key)
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
    if encrypt_key is not None:  # given by --encrypt-key or, silently, by TRAINFER_BUNDLE_KEY: say so
        console.print("[bold]encrypted[/] model.onnx.enc (AES-256-GCM): predict --key / serve --key-file need the key")


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
    trust: Annotated[Path | None, _trust()] = None,
    key: Annotated[Path | None, typer.Option(help="Bundle key file of an encrypted bundle (decrypted in memory "
                                                  "only).")] = None,
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

    options: dict[str, Any] = {"threads": threads, "chunk_size": chunk_size, "force": force, "id_column": id_column,
                               "trust": trust, "key": _key_bytes(key, "--key")}
    if quiet or as_json or not sys.stdout.isatty():
        report = predict_fn(bundle, input, out, **options)
    else:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("predicting", total=None)
            report = predict_fn(bundle, input, out, **options,
                                on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    rows = report['rows']
    _emit(report, as_json, f"[bold]predicted[/] {rows} row{'' if rows == 1 else 's'} -> {report['out']}")



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
    api_key_file: Annotated[Path | None, typer.Option(help=(
        "File with one API key per line, or sha256:HEX of one (then the file holds no usable secret; make "
        "the line with: printf %s KEY | sha256sum | awk '{print \"sha256:\" $1}'). Clients send "
        "'Authorization: Bearer KEY'."))] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(
        help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(
        help="The certificate's PEM private key (an encrypted one: see Security above).")] = None,
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
    trust: Annotated[Path | None, _trust()] = None,
    key_file: Annotated[Path | None, typer.Option(help="Bundle key file of an encrypted bundle (decrypted in "
                                                       "memory only, in every worker).")] = None,
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

    Security: --ssl-certfile and --ssl-keyfile serve HTTPS, checked before start-up (a missing file,
    a key that is not the certificate's, an encrypted key without its password are errors); an
    encrypted key's password comes from the environment variable TRAINFER_SSL_KEYFILE_PASSWORD.
    With --api-key-file every endpoint but /v2/health asks for a key. Neither keys nor request
    bodies are logged: the access log has the request line and status only.

    Example: trainfer serve bundles/digits --port 8000
    """
    from trainfer.runtime import load
    from trainfer.serving import serve as serve_fn

    # verify the bundle before binding the port: a bad bundle is a clear error, not a crash loop
    load(bundle, trust=trust, key=_key_bytes(key_file, "--key-file"))
    serve_fn(bundle, trust=trust, key_file=key_file, name=name, host=host, port=port, workers=workers, threads=threads,
             api_key_file=api_key_file, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
             max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_ms=timeout_ms,
             max_body_mb=max_body_mb, header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
             keep_alive_s=keep_alive_s, access_log=access_log)
