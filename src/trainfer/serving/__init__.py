"""`trainfer serve`: real-time inference over HTTP (Open Inference Protocol v2), torch-free."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
from pathlib import Path
from typing import Any

from trainfer.runtime import load
from trainfer.serving.apikeys import hash_api_key, read_api_keys
from trainfer.serving.app import ServeConfig, create_app
from trainfer.serving.limits import LIMITS, check_limits, check_port
from trainfer.serving.tls import PASSWORD_ENV, check_tls

_ENV = "TRAINFER_SERVE"  # how `--workers N` hands the settings to each worker process


def build_app(bundle: str | Path, config: ServeConfig, threads: int | None = None, *,
              trust: str | Path | None = None, key: bytes | str | Path | None = None) -> Any:
    """A ready ASGI app for ``bundle`` (hashes verified on load), for uvicorn or any ASGI server. ``trust`` and
    ``key``: as for :func:`trainfer.load` (signer's public key file; an encrypted bundle's key or key file)."""
    return create_app(load(bundle, threads=threads, trust=trust, key=key), config)


def _freeze_heap() -> None:
    """Move everything alive now (libraries, the app, the model) out of the garbage collector's sight.

    A full collection walks every tracked object: in a server process that took 50-65 ms on this
    2-core machine, and it lands on whichever requests are in flight (p99 at concurrency 64 was 7x the
    p50; with the heap frozen after start-up, 1.4x; benchmarks/serve_load.py). Only a server process
    does this: an app mounted in someone else's process leaves their collector alone."""
    gc.collect()
    gc.freeze()


def _factory() -> Any:  # uvicorn --factory entry point for multi-process serving
    from trainfer.serving.connection import HeaderTimeoutProtocol

    spec = json.loads(os.environ[_ENV])
    cfg = ServeConfig(**{**spec["config"], "api_keys": tuple(spec["config"]["api_keys"])})
    HeaderTimeoutProtocol.header_timeout_s = cfg.header_timeout_s
    HeaderTimeoutProtocol.write_timeout_s = cfg.body_timeout_s
    # the key file's path travels, never the key: each worker reads it (and decrypts in its own memory)
    app = build_app(spec["bundle"], cfg, spec["threads"], trust=spec.get("trust"), key=spec.get("key_file"))
    _freeze_heap()
    return app


def serve(bundle: str | Path, *, name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, threads: int | None = None, api_key_file: str | Path | None = None,
          ssl_certfile: str | Path | None = None, ssl_keyfile: str | Path | None = None,
          access_log: bool = True, trust: str | Path | None = None, key_file: str | Path | None = None,
          **limits: Any) -> None:
    """Serve ``bundle`` until interrupted; SIGTERM/SIGINT drain requests in flight before exiting.

    ``trust``: a public key file the bundle must be signed with; ``key_file``: an encrypted bundle's key file.
    ``limits``: the ServeConfig fields (max_batch_size, max_delay_ms, max_queue, timeout_ms, max_body_mb,
    header_timeout_s, body_timeout_s, keep_alive_s), each checked against its range before start-up.

    ``ssl_certfile`` and ``ssl_keyfile`` (PEM, both or neither) serve HTTPS; an encrypted key's password
    comes from the environment variable TRAINFER_SSL_KEYFILE_PASSWORD. ``api_key_file``: one key, or
    ``sha256:HEX`` of one (``hash_api_key``), per line. Both are checked before the port is bound.

    Example: ``serve("bundles/digits", port=8000, max_batch_size=32, max_delay_ms=2)``.
    """
    import signal
    import sys

    import uvicorn

    from trainfer.serving.connection import HeaderTimeoutProtocol

    # every bad value in one message (ServeConfig checks its own fields again, for create_app's callers)
    check_limits(workers=workers, threads=threads, port=port, **{k: v for k, v in limits.items() if k in LIMITS})
    bundle = Path(bundle)

    def warn(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tls = check_tls(ssl_certfile, ssl_keyfile, os.environ.get(PASSWORD_ENV), warn=warn)
    keys = read_api_keys(api_key_file, warn=warn) if api_key_file else ()
    config = ServeConfig(name=name or bundle.resolve().name, api_keys=keys, access_log=access_log, **limits)
    check_port(host, port)
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; exit 0 for a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    HeaderTimeoutProtocol.header_timeout_s = config.header_timeout_s
    HeaderTimeoutProtocol.write_timeout_s = config.body_timeout_s  # a client's pause in reading an answer
    # The drain waits for what is in flight; each stage of a request has its own bound (body, queue,
    # model), so the drain's own limit only has to cover their sum.
    drain_s = math.ceil(config.body_timeout_s + config.timeout_ms / 1e3) + 30
    # The app writes its own access log (uvicorn's costs ~50 us of CPU per request: see asgi.AccessLog).
    common = {"host": host, "port": port, "access_log": False, "timeout_graceful_shutdown": drain_s,
              "timeout_keep_alive": config.keep_alive_s, "http": "trainfer.serving.connection:HeaderTimeoutProtocol",
              "log_level": "info", "server_header": False,  # no "server: uvicorn" advertised
              **tls}  # uvicorn's own ssl options; its start-up line then says https://
    if workers > 1:
        os.environ[_ENV] = json.dumps({"bundle": str(bundle), "threads": threads,
                                       "config": dataclasses.asdict(config),
                                       "trust": None if trust is None else str(Path(trust).resolve()),
                                       "key_file": None if key_file is None else str(Path(key_file).resolve())})
        uvicorn.run("trainfer.serving:_factory", factory=True, workers=workers, **common)
    else:
        app = build_app(bundle, config, threads, trust=trust, key=key_file)
        _freeze_heap()
        uvicorn.run(app, **common)


__all__ = ["ServeConfig", "build_app", "create_app", "hash_api_key", "serve"]
