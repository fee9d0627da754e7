"""A tiny static server for a built site: the standard library's, with the headers the page needs.

Cross-origin isolation (COOP same-origin + COEP require-corp) lets onnxruntime-web use wasm threads
(SharedArrayBuffer); .wasm must be served as application/wasm for streaming compilation, and .mjs as
JavaScript for module imports. Any static host that sends these headers serves the same site.
"""

from __future__ import annotations

import errno
import functools
import http.server
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from trainfer.errors import ConfigError

HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
         ".json": "application/json", ".html": "text/html; charset=utf-8", ".onnx": "application/octet-stream",
         ".txt": "text/plain; charset=utf-8"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self) -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a static page: the browser's console is where its problems show


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port another server holds is an error, not shared


def make_server(site: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A bound (not yet serving) server for ``site``; port 0 picks a free one. A busy port is a ConfigError."""
    handler = functools.partial(_Handler, directory=str(site))
    try:
        return _Server((host, port), handler)
    except socket.gaierror:
        raise ConfigError(f"--host {host} is not an address of this machine",
                          hint="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port} is in use on {host}", hint="choose another --port (0 picks a free one)") \
                from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"--port {port} needs privileges on this machine", hint="use a port above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host} is not an address of this machine",
                              hint="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
        raise


def url_of(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in str(shown):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve_site(site: Path, host: str = "127.0.0.1", port: int = 8000,
               on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``site`` until interrupted (Ctrl-C raises KeyboardInterrupt to the caller, after closing)."""
    server = make_server(site, host, port)
    try:
        if on_ready is not None:
            on_ready(url_of(server))
        server.serve_forever()
    finally:
        server.server_close()
