"""`trainfer serve`: real-time inference over HTTP (Open Inference Protocol v2), torch-free."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from pathlib import Path
from typing import Any

from trainfer.runtime import load
from trainfer.serving.app import ServeConfig, create_app, read_api_keys

_ENV = "TRAINFER_SERVE"  # how `--workers N` hands the settings to each worker process


def build_app(bundle: str | Path, config: ServeConfig, threads: int | None = None) -> Any:
    """A ready ASGI app for ``bundle`` (hashes verified on load), for uvicorn or any ASGI server."""
    return create_app(load(bundle, threads=threads), config)


def _freeze_heap() -> None:
    """Move everything alive now (libraries, the app, the model) out of the garbage collector's sight.

    A full collection walks every tracked object: in a server process that took 50-65 ms on this
    2-core machine, and it lands on whichever requests are in flight (p99 at concurrency 64 was 7x the
    p50; with the heap frozen after start-up, 1.4x; benchmarks/serve_load.py). Only a server process
    does this: an app mounted in someone else's process leaves their collector alone."""
    gc.collect()
    gc.freeze()


def _factory() -> Any:  # uvicorn --factory entry point for multi-process serving
    spec = json.loads(os.environ[_ENV])
    cfg = ServeConfig(**{**spec["config"], "api_keys": tuple(spec["config"]["api_keys"])})
    app = build_app(spec["bundle"], cfg, spec["threads"])
    _freeze_heap()
    return app


def serve(bundle: str | Path, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, threads: int | None = None, api_key_file: str | Path | None = None,
          access_log: bool = True, **limits: Any) -> None:
    """Serve ``bundle`` until interrupted; SIGTERM/SIGINT drain requests in flight before exiting.

    Example: ``serve("bundles/digits", port=8000, max_batch_size=32, max_delay_ms=2)``.
    """
    import signal
    import sys

    import uvicorn

    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; exit 0 for a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    bundle = Path(bundle)
    keys = read_api_keys(api_key_file) if api_key_file else ()
    config = ServeConfig(name=name or bundle.resolve().name, api_keys=keys, access_log=access_log, **limits)
    # The app writes its own access log (uvicorn's costs ~50 us of CPU per request: see asgi.AccessLog).
    common = {"host": host, "port": port, "access_log": False, "timeout_graceful_shutdown": 30,
              "log_level": "info", "server_header": False}  # no "server: uvicorn" advertised
    if workers > 1:
        os.environ[_ENV] = json.dumps({"bundle": str(bundle), "threads": threads,
                                       "config": dataclasses.asdict(config)})
        uvicorn.run("trainfer.serving:_factory", factory=True, workers=workers, **common)
    else:
        app = build_app(bundle, config, threads)
        _freeze_heap()
        uvicorn.run(app, **common)


__all__ = ["ServeConfig", "build_app", "create_app", "serve"]
