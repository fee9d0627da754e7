"""The serving app in process (no uvicorn): the ASGI stack create_app returns, its lifespan, and what
the hot path answers when the model itself fails."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import trainfer
from trainfer.serving import ServeConfig, create_app
from trainfer.serving.asgi import AccessLog


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app as an ASGI server would (lifespan startup), yield a client, then shut it down."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
                                   outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}


def test_a_failing_model_is_a_500_json_error_and_the_server_keeps_serving(digits_bundle: Path) -> None:
    predictor = trainfer.load(digits_bundle, threads=1)
    x = np.zeros((1, 64), dtype=np.float32)
    good = predictor.run(predictor.prepare(x))
    calls = {"n": 0}
    real_run = predictor.run

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("onnxruntime: out of memory")
        return real_run(batch)

    predictor.run = flaky  # type: ignore[method-assign]
    app = create_app(predictor, ServeConfig(name="digits", access_log=False))

    async def main() -> list[httpx.Response]:
        async with _lifespan(app) as c:
            return [await c.post("/v2/models/digits/infer", json=_infer_body(x)),
                    await c.post("/v2/models/digits/infer", json=_infer_body(x)),
                    await c.get("/v2/health/ready")]

    failed, ok, ready = asyncio.run(main())
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    assert failed.json() == {"error": "inference failed; the server log has the details"}
    assert ok.status_code == 200, ok.text
    np.testing.assert_allclose(ok.json()["outputs"][0]["data"], good.reshape(-1), rtol=1e-6)
    assert ready.json() == {"ready": True}


def test_the_hot_path_and_the_fastapi_route_answer_alike(digits_bundle: Path) -> None:
    # Requests for the served model take the hot path; another model name goes through FastAPI's route.
    app = create_app(trainfer.load(digits_bundle, threads=1), ServeConfig(name="digits", access_log=False))
    x = np.zeros((2, 64), dtype=np.float32)

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with _lifespan(app) as c:
            return (await c.post("/v2/models/digits/infer", json=_infer_body(x)),
                    await c.post("/v2/models/other/infer", json=_infer_body(x)),
                    await c.post("/v2/models/digits/infer", content=b"{"))

    ok, unknown, bad = asyncio.run(main())
    assert ok.status_code == 200 and [o["name"] for o in ok.json()["outputs"]] == ["probabilities", "label"]
    assert unknown.status_code == 404 and "digits" in unknown.json()["error"]
    assert bad.status_code == 400 and bad.json() == {"error": "the request body is not valid JSON"}


def test_access_log_lines_are_flushed_at_shutdown(digits_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = create_app(trainfer.load(digits_bundle, threads=1), ServeConfig(name="digits"))

    async def main() -> None:
        async with _lifespan(app) as c:
            for _ in range(3):
                assert (await c.get("/v2/health/live")).status_code == 200
            # buffered: nothing written yet (the timer fires every 0.2 s) ...
            assert "/v2/health/live" not in capsys.readouterr().out

    asyncio.run(main())
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "/v2/health/live" in ln]
    assert len(lines) == 3 and all(re.search(r'"GET /v2/health/live HTTP/1\.1" 200 \d+\.\d\dms$', ln) for ln in lines)


def test_access_log_writes_in_bulk_once_full() -> None:
    out = io.StringIO()
    log = AccessLog(out, interval_s=60, max_lines=3)
    scope = {"path": "/x", "query_string": b"a=1", "client": None, "method": "GET", "http_version": "1.1"}

    async def main() -> None:
        for _ in range(2):
            log.add(scope, 200, 0.001)
        assert out.getvalue() == ""  # under max_lines and before the interval: still buffered
        log.add(scope, 404, 0.002)

    asyncio.run(main())
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].endswith('-:- "GET /x?a=1 HTTP/1.1" 200 1.00ms') and " 404 " in lines[2]


async def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
                chunks: list[bytes | None]) -> list[dict[str, Any]]:
    """One raw ASGI request; a None chunk is a client disconnect. Returns the messages sent."""
    sent: list[dict[str, Any]] = []
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0) if pending else None
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return sent


def test_a_chunked_body_is_counted_even_beside_a_content_length(digits_bundle: Path) -> None:
    # Some HTTP parsers (h11) let Transfer-Encoding: chunked win over Content-Length: the limit must
    # not trust the small Content-Length then.
    app = create_app(trainfer.load(digits_bundle, threads=1),
                     ServeConfig(name="digits", access_log=False, max_body_mb=0.001))  # 1048 bytes
    headers = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    sent = asyncio.run(_call(app, "POST", "/v2/models/digits/infer", headers, [b"x" * 1000] * 3))
    assert sent[0]["status"] == 413 and b"MB limit" in sent[1]["body"]


def test_a_client_gone_before_its_body_is_logged_499_not_500(digits_bundle: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    app = create_app(trainfer.load(digits_bundle, threads=1), ServeConfig(name="digits"))

    async def main() -> list[dict[str, Any]]:
        async with _lifespan(app):
            return await _call(app, "POST", "/v2/models/digits/infer", [(b"transfer-encoding", b"chunked")],
                               [b"{", None])

    assert asyncio.run(main()) == []  # nothing is sent to a client that left
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "/v2/models/digits/infer" in ln)
    assert " 499 " in line, line


@pytest.mark.parametrize("body, status", [
    (b'{"id": "\\ud800", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": '
     + str([0.0] * 64).encode() + b"}]}", 400),  # a lone surrogate: parses, but cannot be echoed back
    (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),  # nested beyond any parser's depth
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1' + b"0" * 400 + b", "
     + b", ".join([b"0"] * 63) + b"]}]}", 400),  # an integer beyond float64
    (b'{"id": null, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": '
     + str([0.0] * 64).encode() + b"}]}", 200),  # null is as good as no id
])
def test_hostile_json_is_a_400_not_a_500(digits_bundle: Path, body: bytes, status: int) -> None:
    app = create_app(trainfer.load(digits_bundle, threads=1), ServeConfig(name="digits", access_log=False))

    async def main() -> httpx.Response:
        async with _lifespan(app) as c:
            return await c.post("/v2/models/digits/infer", content=body)

    r = asyncio.run(main())
    assert r.status_code == status, r.text
    if status == 400:
        assert set(r.json()) == {"error"}


def test_access_log_survives_a_dead_reader_and_writes_whole_lines_in_small_chunks() -> None:
    scope = {"path": "/" + "p" * 200, "query_string": b"", "client": ("127.0.0.1", 1), "method": "GET",
             "http_version": "1.1"}

    class Dead(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    async def fill(log: AccessLog, n: int) -> None:
        for _ in range(n):
            log.add(scope, 200, 0.001)

    dead = AccessLog(Dead(), interval_s=60, max_lines=10)
    asyncio.run(fill(dead, 25))  # two failed bulk writes: nothing raised, nothing kept
    assert dead.dropped == 20 and len(dead._lines) == 5

    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

    log = AccessLog(Recorder(), interval_s=60, max_lines=1000)
    asyncio.run(fill(log, 100))
    log.flush()
    assert len(writes) > 1 and all(len(w) <= 4096 and w.endswith("\n") for w in writes)
    assert sum(w.count("\n") for w in writes) == 100


def test_every_spelling_of_a_missing_number_over_predict_is_imputed_like_null(digits_bundle: Path) -> None:
    # A CSV cell may be empty, blank or "NA"; /predict must impute them as the file path does, not refuse them.
    predictor = trainfer.load(digits_bundle, threads=1)
    names = [c["name"] for c in predictor.features.inputs.columns]
    row = {n: float(i % 7) for i, n in enumerate(names)}
    spellings = [None, "", " ", "NA", "NaN", "null"]
    bodies = [{"rows": [{**row, names[3]: s}]} for s in spellings]
    expected = predictor.predict_proba([{**row, names[3]: None}])[0]

    async def go() -> list[Any]:
        async with _lifespan(create_app(predictor, ServeConfig(name="digits", access_log=False))) as client:
            return [await client.post("/predict", json=b) for b in bodies]

    for spelling, r in zip(spellings, asyncio.run(go()), strict=True):
        assert r.status_code == 200, (spelling, r.text)
        np.testing.assert_allclose(r.json()["probabilities"][0], expected, atol=1e-6)
