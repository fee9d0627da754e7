"""`trainfer serve` at its edges (issue 10): limits checked before start-up, a busy port, an oversized
body that stock clients still see answered with 413, and time bounds on headers, bodies and idle
connections that hold even through a SIGTERM drain.

Every server is a subprocess on 127.0.0.1 and a free port (see _serve_fixtures.py); every client here
has a timeout, so no test waits on a server that misbehaves.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _serve_fixtures import Server, running_server
from conftest import assert_user_error, run_main

INFER = "/v2/models/digits/infer"
ROW = [0.0] * 64


def _small_infer() -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}).encode()


# ---- 26 and 11: every limit checked, the port tried, before anything starts ------------------------

@pytest.mark.parametrize("args, mentions", [
    (["--max-body-mb", "0"], ["--max-body-mb", "at least 0.001"]),
    (["--max-body-mb", "nan"], ["--max-body-mb"]),
    (["--max-body-mb", "1e9"], ["--max-body-mb", "at most"]),
    (["--max-batch-size", "0"], ["--max-batch-size"]),
    (["--max-queue", "-3"], ["--max-queue"]),
    (["--timeout-ms", "0"], ["--timeout-ms"]),
    (["--max-delay-ms", "-1"], ["--max-delay-ms"]),
    (["--workers", "0"], ["--workers"]),
    (["--threads", "0"], ["--threads"]),
    (["--port", "0"], ["--port"]),
    (["--port", "70000"], ["--port"]),
    (["--header-timeout-s", "0"], ["--header-timeout-s"]),
    (["--body-timeout-s", "inf"], ["--body-timeout-s"]),
    (["--keep-alive-s", "-5"], ["--keep-alive-s"]),
    # positive, yet every request would fail: 413 for any body, 504 for any wait, headers never in time
    (["--max-body-mb", "1e-9"], ["--max-body-mb", "at least 0.001"]),
    (["--timeout-ms", "0.001"], ["--timeout-ms", "at least 1"]),
    (["--header-timeout-s", "0.001"], ["--header-timeout-s", "at least 0.1"]),
    (["--max-body-mb", "0", "--workers", "0"], ["--max-body-mb", "--workers"]),  # every problem at once
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_a_limit_out_of_range_is_one_error_before_start_up(digits_bundle: Path, args: list[str],
                                                           mentions: list[str], capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))  # would serve forever
    result = run_main(["serve", digits_bundle, *args], capsys)
    assert_user_error(result, mentions=mentions)
    assert started == [], "the server started with a limit out of range"


def test_the_python_api_checks_limits_too(digits_bundle: Path) -> None:
    from trainfer.errors import ConfigError
    from trainfer.serving import ServeConfig

    with pytest.raises(ConfigError, match="max-body-mb"):
        ServeConfig(name="digits", max_body_mb=0)


def test_a_busy_port_is_one_error_naming_it(digits_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_main(["serve", digits_bundle, "--port", port], capsys)
    line = assert_user_error(result, mentions=[str(port), "in use"])
    assert "hint: " in result.stderr and "--port" in result.stderr, result.stderr
    assert "uvicorn" not in result.stderr.lower() and line


# ---- a server with small limits -----------------------------------------------------------------------

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def tight_server(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--name", "digits", "--max-body-mb", "1", "--body-timeout-s", str(BODY_TIMEOUT_S),
            "--header-timeout-s", str(HEADER_TIMEOUT_S), "--keep-alive-s", "1", "--no-access-log"]
    with running_server(digits_bundle, args, tmp_path_factory.mktemp("serve-tight")) as s:
        yield s


# ---- 19: a refused body is read (up to a bound) so that the client sees the 413 -----------------------

def test_urllib_clients_sending_too_much_all_see_413(tight_server: Server) -> None:
    body = b"x" * (3 << 20)  # 3 MB against a 1 MB limit
    results: list[object] = []

    def one() -> None:
        req = urllib.request.Request(f"{tight_server.url}{INFER}", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30).close()
            results.append(200)
        except urllib.error.HTTPError as exc:
            results.append((exc.code, json.loads(exc.read())["error"]))
        except OSError as exc:  # BrokenPipeError, ConnectionResetError: the 413 never reached the client
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = Counter(r if isinstance(r, str | int) else r[0] for r in results)
    print(f"30 urllib clients, 3 MB each: {dict(counts)}")
    assert counts == {413: 30}, counts
    assert all("1 MB limit" in r[1] for r in results if isinstance(r, tuple))
    assert httpx.post(f"{tight_server.url}{INFER}", content=_small_infer(), timeout=10).status_code == 200


def test_a_client_still_sending_when_the_413_is_decided_reads_it(tight_server: Server) -> None:
    # The worst case for an early answer: the headers first, the body only once the server has decided,
    # on a connection to be closed after the answer (urllib's way).
    body = b"x" * (2 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", tight_server.port, timeout=30)
    try:
        conn.putrequest("POST", INFER)
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Connection", "close")
        conn.endheaders()
        time.sleep(0.3)  # the server has answered 413 by now
        for i in range(0, len(body), 64 << 10):
            conn.send(body[i:i + (64 << 10)])
        response = conn.getresponse()
        assert response.status == 413
        assert "MB limit" in json.loads(response.read())["error"]
        assert response.getheader("connection") == "close"
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_is_read_before_its_413(tight_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(48):  # 3 MB in 64 KB chunks, no Content-Length
            yield b"y" * (64 << 10)

    r = httpx.post(f"{tight_server.url}/predict", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "MB limit" in r.json()["error"]


# ---- 21: bounded time for headers, bodies and idle connections ----------------------------------------

def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent before."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True, got
            got += data
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_a_connection_that_sends_no_complete_headers_is_closed(tight_server: Server) -> None:
    for opening in (b"", b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"):  # idle; half a header
        with socket.create_connection(("127.0.0.1", tight_server.port), timeout=5) as sock:
            t0 = time.monotonic()
            sock.sendall(opening)
            closed, _ = _closed_within(sock, HEADER_TIMEOUT_S + 4)
            waited = time.monotonic() - t0
        assert closed, f"a connection that sent {opening!r} was still open after {waited:.1f} s"
        assert HEADER_TIMEOUT_S * 0.8 < waited < HEADER_TIMEOUT_S + 3, waited


def test_a_body_that_stops_halfway_gets_408_within_the_bound(tight_server: Server) -> None:
    body = _small_infer()
    with socket.create_connection(("127.0.0.1", tight_server.port), timeout=5) as sock:
        t0 = time.monotonic()
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        closed, got = _closed_within(sock, BODY_TIMEOUT_S + 4)
        waited = time.monotonic() - t0
    assert closed and got.startswith(b"HTTP/1.1 408 "), got[:300]
    assert b"did not arrive within" in got
    assert BODY_TIMEOUT_S * 0.8 < waited < BODY_TIMEOUT_S + 3, waited
    assert "Traceback" not in tight_server.log()


def test_sigterm_with_a_stalled_client_exits_0_within_the_body_bound(digits_bundle: Path, tmp_path: Path) -> None:
    args = ["--name", "digits", "--body-timeout-s", str(BODY_TIMEOUT_S), "--no-access-log"]
    server = Server(digits_bundle, args, tmp_path).start()
    try:
        body = _small_infer()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body[:100])
            time.sleep(0.3)  # the request is in the app, waiting for the rest of its body
            code, took = _sigterm(server, BODY_TIMEOUT_S + 15)
            _, got = _closed_within(sock, 1)
    finally:
        server.stop()
    log = server.log()
    print(f"SIGTERM with a stalled client: exit {code} after {took:.1f} s (body bound {BODY_TIMEOUT_S:g} s)")
    assert code == 0, log[-2000:]
    assert took < BODY_TIMEOUT_S + 2, f"the drain waited {took:.1f} s on a stalled client\n{log[-2000:]}"
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert got.startswith(b"HTTP/1.1 408 "), got[:300]


def _sigterm(server: Server, limit_s: float) -> tuple[int, float]:
    """SIGTERM the server; its exit code and how long the drain took."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    code = server.proc.wait(limit_s)  # type: ignore[union-attr]
    return code, time.monotonic() - t0


def test_an_idle_kept_alive_connection_is_closed(tight_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", tight_server.port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        closed, got = _closed_within(sock, 5)
        waited = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 200 ") and closed and waited < 3, (got[:200], waited)


def test_serve_help_says_where_the_column_order_is(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(["serve", "--help"], capsys)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "parameters.columns" in text and "training order" in text, text
    for option in ("--header-timeout-s", "--body-timeout-s", "--keep-alive-s"):
        assert option in text


def test_sigterm_with_a_client_that_never_reads_its_answer_exits_0_within_the_bound(digits_bundle: Path,
                                                                                     tmp_path: Path) -> None:
    # ~12 MB of JSON probabilities for 100k rows, to a client whose receive buffer is tiny and which
    # never reads: the server's writes stall once the socket buffers are full.
    args = ["--name", "digits", "--body-timeout-s", str(BODY_TIMEOUT_S), "--max-body-mb", "64",
            "--timeout-ms", "30000", "--no-access-log"]
    rows = 100_000
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64],
                                   "parameters": {"binary_data_size": rows * 64 * 4}}]}).encode()
    body = head + bytes(rows * 64 * 4)
    server = Server(digits_bundle, args, tmp_path).start()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                         f"Inference-Header-Content-Length: {len(head)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 20
            while "trainfer_batch_size_count 1.0" not in httpx.get(f"{server.url}/metrics", timeout=5).text:
                assert time.monotonic() < deadline, "the big request never reached the model"
                time.sleep(0.05)
            time.sleep(0.5)  # the answer is being written, and stalls
            code, took = _sigterm(server, BODY_TIMEOUT_S + 20)
    finally:
        server.stop()
    log = server.log()
    print(f"SIGTERM with a client not reading a 12 MB answer: exit {code} after {took:.1f} s")
    assert code == 0, log[-2000:]
    assert took < BODY_TIMEOUT_S + 2, f"the drain waited {took:.1f} s on a client that does not read\n{log[-2000:]}"
    assert "Traceback" not in log, log[-3000:]
