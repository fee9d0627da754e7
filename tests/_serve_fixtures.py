"""A real `trainfer serve` process for the server tests: loopback only, a free port, torch blocked.

The server runs as ``python -c WRAPPER serve BUNDLE --port P ...``: the wrapper installs an import
hook that makes every ``import torch`` fail (and records the attempt in a file) and then calls
``trainfer.cli.main`` exactly as the console script does. A server that needed torch would not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
START_TIMEOUT_S = 60

WRAPPER = textwrap.dedent("""
    import os, sys

    class _BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                with open(os.environ["TRAINFER_TEST_TORCH_LOG"], "a") as f:
                    f.write(name + "\\n")
                raise ImportError(f"torch is blocked in the server under test ({name})")
            return None

    sys.meta_path.insert(0, _BlockTorch())
    from trainfer.cli import main
    main(sys.argv[1:])
""")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `trainfer serve` subprocess; ``url`` is its base URL once ``start`` returned."""

    def __init__(self, bundle: Path, args: Sequence[str], workdir: Path) -> None:
        self.bundle, self.args, self.workdir = Path(bundle), [str(a) for a in args], Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        self.torch_log = self.workdir / "torch-imports.txt"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Server:
        for _attempt in range(3):  # another process may grab the free port between probe and bind
            self.port = free_port()
            env = dict(os.environ)
            env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
            env["TRAINFER_TEST_TORCH_LOG"] = str(self.torch_log)
            env.setdefault("OMP_NUM_THREADS", "1")
            cmd = [sys.executable, "-c", WRAPPER, "serve", str(self.bundle), "--host", "127.0.0.1",
                   "--port", str(self.port), *self.args]
            with open(self.log_path, "ab") as log:  # a file, not a pipe: access logs must never block the server
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
            if self._wait_ready():
                return self
            if "address already in use" not in self.log().lower():
                break
        self.stop()
        raise AssertionError(f"`trainfer serve` did not become ready; log:\n{self.log()}")

    verify: object = True  # httpx's verify: a TLS server's tests give their CA's context

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = httpx.get(f"{self.url}/v2/health/ready", timeout=2, verify=self.verify)
                if r.status_code == 200 and r.json().get("ready") is True:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc status")

    def torch_import_attempts(self) -> list[str]:
        return self.torch_log.read_text().split() if self.torch_log.exists() else []

    def mapped_torch_libraries(self) -> list[str]:
        maps = Path(f"/proc/{self.pid}/maps").read_text().splitlines()
        return sorted({line.split()[-1] for line in maps if "libtorch" in line or "/torch/" in line})


@contextlib.contextmanager
def running_server(bundle: Path, args: Sequence[str], workdir: Path) -> Iterator[Server]:
    server = Server(bundle, args, workdir)
    try:
        yield server.start()
    finally:
        server.stop()


# ---- a model whose cost is far above the HTTP and preprocessing cost of a request -----------------

# Wide convolutions on 16x16 images: ~0.5 ms of model time per image on one thread against ~4 us of
# numpy preprocessing, so an overloaded server is bound by the model (the case the bounded queue is
# for) and not by parsing requests. Trained for one epoch: only parity with the bundle matters here.
HEAVY_CNN = {"data": "synthetic-images", "model": "cnn", "epochs": 1,
             "overrides": ["data.options.n_samples=120", "data.options.size=16", "data.options.n_classes=3",
                           "model.channels=[48,96]"]}
_cache: dict[str, Path] = {}


def heavy_cnn_bundle(factory: Any) -> Path:
    """The exported bundle of HEAVY_CNN (built once per session; never modify it)."""
    if "heavy-cnn" not in _cache:
        from trainfer.exporting import export
        from trainfer.training import train

        root = factory.mktemp("serve-heavy-cnn")
        run = train(out=root / "run", seed=0, quiet=True, **HEAVY_CNN)
        _cache["heavy-cnn"] = Path(export(run, root / "bundle"))
    return _cache["heavy-cnn"]


# ---- a minimal HTTP/1.1 client for load tests ----------------------------------------------------

async def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST on a fresh loopback connection (Connection: close): (status, headers, body).

    httpx's async connection pool costs milliseconds per request once hundreds are in flight, which
    would measure the client instead of the server; this costs a few tens of microseconds.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n{extra}\r\n".encode() + body)
        await writer.drain()
        data = await reader.read()  # until the server closes the connection
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    head, _, payload = rest.partition(b"\r\n\r\n")
    parsed = {}
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        parsed[key.strip().lower().decode()] = value.strip().decode()
    return int(status_line.split()[1]), parsed, payload
