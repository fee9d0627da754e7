"""The server's request path as plain ASGI, ahead of FastAPI: API keys, load shedding, request metrics,
an access log, the body limit and the inference endpoint.

FastAPI's routing, Request and Response objects, exception layers and Python's logging together cost
more CPU per request than a batched MLP inference (measured in benchmarks/serve_load.py), so the hot
path (POST /v2/models/NAME/infer) never enters FastAPI; every other endpoint does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TextIO
from urllib.parse import unquote_plus

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from trainfer.serving.apikeys import matches

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error this server answers: a JSON object with one "error" string."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def busy() -> JSONResponse:
    """503 for a full queue: the client should retry shortly."""
    return error(503, "server busy: the request queue is full; retry shortly", {"Retry-After": "1"})


class Answer(NamedTuple):
    """A 200 answer of the hot path, sent without a Response object."""

    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", self.content_type), (b"content-length", str(len(self.body)).encode()), *self.headers]})
        await send({"type": "http.response.body", "body": self.body})


def endpoint(path: str) -> str:
    """The route template for metrics labels (bounded cardinality: model names are not labels)."""
    if path.startswith("/v2/models/"):
        tail = path[len("/v2/models/"):].partition("/")[2]
        return "/v2/models/{name}" + (f"/{tail}" if tail in ("infer", "ready") else "")
    return path if path in ("/v2", "/v2/health/live", "/v2/health/ready", "/predict", "/metrics", "/docs",
                            "/openapi.json") else "other"


# Query parameters whose values are credentials when a client puts one in the URL (no endpoint here reads
# the query; keys go in the Authorization header): logged as NAME=[redacted], never their value.
SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "access_token", "token", "auth", "authorization",
                           "bearer", "password", "secret"})


def redact(query: str) -> str:
    """``query`` with the values of SECRET_PARAMS replaced by [redacted] (names matched in any case)."""
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and unquote_plus(name).strip().lower() in SECRET_PARAMS:
            parts[i] = name + "=[redacted]"
    return "&".join(parts)


class AccessLog:
    """One line per request, written in bulk: every ``interval_s``, every ``max_lines`` lines and at
    shutdown (``flush``). Python's logging module (uvicorn's access log) costs about 50 us of CPU per
    line on a small machine, a sixth of a whole MLP request; a hard kill loses at most ``interval_s``
    of lines. Line: time, client, request line, status, milliseconds in the server."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 0.2, max_lines: int = 512) -> None:
        self.stream, self.interval_s, self.max_lines = stream, interval_s, max_lines
        self._lines: list[str] = []
        self.dropped = 0  # lines lost to a failed write
        self._timer: asyncio.TimerHandle | None = None
        self._second, self._stamp = -1, ""

    def add(self, scope: Scope, status: int, seconds: float) -> None:
        now = time.time()
        if int(now) != self._second:  # strftime once a second, the milliseconds per line
            self._second = int(now)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        client = scope.get("client")
        path = scope["path"]
        if scope.get("query_string"):
            path += "?" + redact(scope["query_string"].decode("latin-1"))
        if not path.isprintable():  # no forged lines from a decoded %0A in the path
            path = path.encode("unicode_escape").decode("ascii")
        self._lines.append(f"{self._stamp}.{int(now * 1000) % 1000:03d}Z {client[0] if client else '-'}:"
                           f"{client[1] if client else '-'} \"{scope['method']} {path} HTTP/{scope['http_version']}\" "
                           f"{status} {seconds * 1e3:.2f}ms\n")
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        stream = self.stream or sys.stdout
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                # Writes of at most 4 KB (PIPE_BUF) of whole lines: with --workers N sharing one pipe,
                # larger writes could interleave mid-line.
                if size + len(line) > 4096 and chunk:
                    stream.write("".join(chunk))
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                stream.write("".join(chunk))
                stream.flush()
        except (OSError, ValueError):  # the log's reader went away (or stdout closed): drop, keep serving
            self.dropped += len(lines)


class Sweeper:
    """Deadlines for awaits on a client (a body to receive): ``wait`` raises TimeoutError when the await
    outlives its deadline.

    One check every SWEEP_S interrupts every late await (a task cancel, turned back into TimeoutError):
    a timer per request, or asyncio.timeout() around each receive, cost 1.5-3.5 us of the ~100 us a
    request takes in the app; this costs a dict entry. A deadline is thus kept to within SWEEP_S."""

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Task, float] = {}  # tasks in an await -> its deadline
        self._late: set[asyncio.Task] = set()  # cancelled by _sweep: their wait() raises TimeoutError
        self._sweeping = False

    async def wait(self, awaitable: Awaitable[Any], deadline: float) -> Any:
        task = asyncio.current_task()
        if task is None:  # a programming error, not a client's: deadlines cancel tasks
            raise RuntimeError("Sweeper.wait must be awaited inside an asyncio task")
        self._waiting[task] = deadline
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task not in self._late:
                raise
            self._late.discard(task)
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._waiting.pop(task, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._waiting.items()):
            if now >= deadline:
                del self._waiting[task]
                self._late.add(task)
                task.cancel()
        if self._waiting:
            loop.call_later(SWEEP_S, self._sweep)
        else:
            self._sweeping = False


class Guard:
    """API keys, load shedding, request metrics and the access log for every HTTP request.

    ``keys``: the SHA-256 digests of the accepted keys (apikeys.digests); none means no key is asked."""

    def __init__(self, app: ASGIApp, keys: list[bytes], observe: Callable[[str, int, float], None],
                 depth: Callable[[], int | None], max_queue: int, access: AccessLog | None,
                 linger_s: float = 30.0) -> None:
        self.app, self.keys, self.observe, self.depth, self.max_queue = app, keys, observe, depth, max_queue
        self.access, self.linger_s = access, linger_s
        self._endpoints: dict[str, str] = {}  # path -> label, for the first paths seen (bounded: paths are not)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        refusal = self._refusal(scope)
        try:
            if refusal is None:
                await self.app(scope, receive, send_status)
            else:  # answered before its body is read: a client still sending it must see the answer too
                await answer_early(refusal, scope, receive, send_status, self.linger_s)
        finally:  # also for a request whose client went away
            seconds = time.perf_counter() - t0
            if scope.get("trainfer.disconnected"):
                status = 499  # the client went away before an answer (nginx's code): not a server error
            label = self._endpoints.get(scope["path"])
            if label is None:
                label = endpoint(scope["path"])
                if len(self._endpoints) < 64:
                    self._endpoints[scope["path"]] = label
            self.observe(label, status, seconds)
            if self.access is not None:
                self.access.add(scope, status, seconds)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self.keys and not scope["path"].startswith("/v2/health"):
            auth = b""
            for key, value in scope["headers"]:
                if key == b"authorization":
                    auth = value
            token = auth[7:] if auth[:7].lower() == b"bearer " else b""
            if not matches(token, self.keys):  # digest to digest, constant time (apikeys.matches)
                return error(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                             {"WWW-Authenticate": "Bearer"})
        depth = self.depth()
        if scope["method"] == "POST" and depth is not None and depth >= self.max_queue:
            # Shed load before reading and parsing the body: under overload a rejection must be cheap.
            return busy()
        return None


LINGER_BYTES = 64 << 20  # the most of a refused body read and discarded so that its client sees the 413
SWEEP_S = 0.25  # how often deadlines on clients are checked: a 408 comes at most this late


class BodyLimit:
    """Bound every request body: in size (413, by Content-Length up front, and by counting the bytes of a
    chunked body as the endpoint reads it, so it sees every body, whatever the endpoint) and in time (408
    when the whole body has not arrived ``timeout_s`` after the headers: a stalled client holds no task,
    and a SIGTERM drain never waits on it longer).

    A refused body is read and discarded up to ``LINGER_BYTES`` before the connection closes (a lingering
    close, as nginx does): closing a socket with unread data resets it, and a client still sending, such
    as urllib, then gets a broken pipe instead of the 413."""

    def __init__(self, app: ASGIApp, max_bytes: int, mb: float, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, f"request body over the {mb:g} MB limit"
        self.timeout_s = timeout_s
        self.sweeper = Sweeper()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length, chunked, _ = body_headers(scope)
        if length is None and not chunked:
            return await self.app(scope, receive, send)  # no body (a GET): nothing to bound
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await answer_early(error(413, self.message), scope, receive, send, self.timeout_s)
        seen = 0
        done = False

        async def bounded() -> Message:
            nonlocal seen, done
            if done:  # the whole body is in: a later receive() waits for a disconnect, unbounded
                return await receive()
            if loop.time() >= deadline:
                raise self._too_slow()
            try:
                message = await self.sweeper.wait(receive(), deadline)
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                # Count even beside a Content-Length: some parsers let chunked win over it.
                if seen > self.max_bytes:
                    if not done:
                        await _discard(receive, deadline)
                    raise StarletteHTTPException(413, self.message, {"Connection": "close"})
            return message

        return await self.app(scope, bounded, send)

    def _too_slow(self) -> StarletteHTTPException:
        return StarletteHTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                      {"Connection": "close"})

def body_headers(scope: Scope) -> tuple[bytes | None, bool, bool]:
    """(Content-Length, chunked, waits for "100 Continue") of a request."""
    length, chunked, expect = None, False, False
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = value
        elif key == b"transfer-encoding":
            chunked = True
        elif key == b"expect":
            expect = value.lower() == b"100-continue"
    return length, chunked, expect


async def answer_early(response: JSONResponse, scope: Scope, receive: Receive, send: Send, linger_s: float) -> None:
    """Send ``response`` to a request whose body is still unread, then read and drop that body (up to
    LINGER_BYTES and ``linger_s``) before the connection closes: a lingering close, as nginx does.
    Closing a socket with unread data resets it, and a client still sending (urllib, curl) then gets a
    broken pipe instead of the answer. A client waiting for "100 Continue" sends nothing more once it
    has the answer, and one that announced more than we would read gets the answer at once."""
    length, chunked, expect = body_headers(scope)
    if expect or (length is None and not chunked) or (
            not chunked and (length is None or not length.isdigit() or int(length) > LINGER_BYTES)):
        return await response(scope, receive, send)
    deadline = asyncio.get_running_loop().time() + linger_s
    headers = [(k, v) for k, v in response.raw_headers if k != b"connection"] + [(b"connection", b"close")]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": True})
    await _discard(receive, deadline)
    await send({"type": "http.response.body", "body": b""})  # completes the answer: then the connection closes


async def _discard(receive: Receive, deadline: float) -> None:
    """Read and drop the rest of a body: until its end, LINGER_BYTES, the deadline or a disconnect."""
    read = 0
    try:
        async with asyncio.timeout_at(deadline):
            while read <= LINGER_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                read += len(message.get("body", b""))
    except TimeoutError:
        return


Handler = Callable[[bytes, "str | None"], Awaitable["Answer | JSONResponse"]]


class FastInfer:
    """POST to ``path`` as plain ASGI: ``handler(body, header)`` answers it (``header`` is the binary
    extension's Inference-Header-Content-Length, or None); everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, path: str, handler: Handler, header: str) -> None:
        self.app, self.path, self.handler, self.header = app, path, handler, header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    scope["trainfer.disconnected"] = True
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except StarletteHTTPException as exc:  # BodyLimit: past the size limit or the time limit
            return await error(exc.status_code, str(exc.detail), exc.headers)(scope, receive, send)
        header = None
        for key, value in scope["headers"]:
            if key == self.header:
                header = value.decode("latin-1")
        answer = await self.handler(b"".join(chunks), header)
        if isinstance(answer, Answer):
            return await answer.send(send)
        return await answer(scope, receive, send)
