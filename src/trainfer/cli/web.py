"""The browser verb: build a bundle's static page (onnxruntime-web, wasm) and serve it locally."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from trainfer.cli._common import (
    JsonFlag,
    QuietFlag,
    Terminated,
    _console,
    _force,
    _spinner,
    _verb,
    app,
    sigterm_stops,
)
from trainfer.errors import ConfigError


def _check_port(value: int) -> int:
    # checked in a callback, not with min/max: typer's range column cut long option names at 80 columns
    if not 0 <= value <= 65535:
        raise typer.BadParameter(f"must be a TCP port 0 to 65535 (0 picks a free one), not {value}")
    return value


def _web_kept(args: dict[str, Any]) -> str:
    out = args.get("out")
    if out is not None and Path(out).exists():
        return f"{out} is whole: the site is written under a temporary name, then renamed"
    return "no site was written (it is written under a temporary name, then renamed)"


@app.command(epilog="The page needs a whole-graph bundle (model.onnx takes the raw columns or images); an "
                    "encrypted bundle is refused, since the page would have to hand its key to every visitor.")
@_verb(kept=_web_kept)
def web(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (from export or optimize), not encrypted.")],
    out: Annotated[Path | None, typer.Option(help="Directory to write the site to (with --serve: serve it from "
                                                  "there; default then: a temporary directory).")] = None,
    force: Annotated[bool, _force("site")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the site until Ctrl-C (a static server with the "
                                                        "cross-origin-isolation headers wasm threads need).")] = False,
    host: Annotated[str, typer.Option(help="With --serve: interface; loopback by default, 0.0.0.0 exposes it.")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="With --serve: TCP port (0 picks a free one); checked free before the "
                                           "site is built.", callback=_check_port)] = 8000,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Build a static web page that predicts in the browser: the bundle's model on onnxruntime-web.

    The site holds index.html, app.js, site.json (inputs, labels), the
    bundle's model.onnx and onnxruntime-web's wasm build (installed once
    from npm into ~/.cache/trainfer, or $TRAINFER_CACHE; its licence is
    kept beside it). Visitors paste or upload CSV rows, or drop images, and
    see labels, probabilities and latency: the model runs on their device,
    and nothing they enter leaves the page.

    Any static host serves the site. For wasm threads it must send
    Cross-Origin-Opener-Policy: same-origin and
    Cross-Origin-Embedder-Policy: require-corp, as --serve does.

    --out is written under a temporary name, then renamed: never
    half-written. An existing site is replaced only with --force; a
    directory holding anything else never is.

    Examples: trainfer web bundles/digits --out site/digits
              trainfer web bundles/digits --serve --port 8080
    """
    from trainfer.web import build_site, make_server
    from trainfer.web.server import url_of

    if out is None and not serve:
        raise ConfigError("say where the site goes: --out DIR builds it there, --serve serves it (or both)",
                          hint=f"trainfer web {bundle} --out site/ (then any static host), or "
                               f"trainfer web {bundle} --serve")
    scratch = Path(tempfile.mkdtemp(prefix="trainfer-web-")) if serve and out is None else None
    site = out if out is not None else scratch / (bundle.absolute().name or "site")  # type: ignore[operator]
    server = None
    try:
        # a busy --port fails before any work; nothing is served before serve_forever
        server = make_server(Path(site).absolute(), host, port) if serve else None
        with _spinner("building the site", show=not quiet and not as_json):
            record = build_site(bundle, site, force=force)
        if server is None:
            _report(record, as_json)
            return
        url = url_of(server)
        record["url"] = url
        if as_json:  # the human form is the "serving" line below (a temporary copy is nothing to host)
            _report(record, as_json)
        try:
            with sigterm_stops():  # SIGTERM stops as Ctrl-C does, the temporary copy removed
                print(f"serving {site} at {url} (Ctrl-C stops)", flush=True)
                server.serve_forever()
        except KeyboardInterrupt as exc:
            kept = f"the site stays at {site}" if scratch is None else "its temporary copy was removed"
            print(f"stopped serving {url}; {kept}", file=sys.stderr)
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    finally:
        if server is not None:
            server.server_close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _report(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record))
        return
    mb = record["bytes"] / 1e6
    _console().print(f"[bold]site[/] {record['site']} ({record['kind']}, {len(record['files'])} files, {mb:.1f} MB; "
                     f"onnxruntime-web {record['onnxruntime_web']}): serve this directory from any static host, or "
                     f"run `trainfer web {record['bundle']} --serve`")
