"""A minimal asyncio HTTP/1.1 load generator for serve_load.py: keep-alive connections with one request
in flight each, closed loop (N connections back to back) and open loop (Poisson arrivals, each latency
timed from its scheduled send: no coordinated omission). Loopback only; bounded in requests and seconds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np

HOST, OPEN_CONNS = "127.0.0.1", 256
clock = time.perf_counter_ns


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight; responses carry a Content-Length."""

    def __init__(self) -> None:
        self.buf, self.fut, self.transport = bytearray(), None, None  # type: ignore[var-annotated]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.fut is None:
            return
        head = bytes(self.buf[:end]).lower() + b"\r\n"
        i = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
        n = int(head[i + 17:head.find(b"\r\n", i + 2)]) if i > 0 else 0
        if len(self.buf) >= end + 4 + n:
            body = bytes(self.buf[end + 4:end + 4 + n])
            del self.buf[:end + 4 + n]
            fut, self.fut = self.fut, None
            fut.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection lost"))

    def request(self, payload: bytes) -> asyncio.Future:
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(payload)  # type: ignore[union-attr]
        return self.fut


async def connect(port: int) -> Conn:
    return (await asyncio.get_running_loop().create_connection(Conn, HOST, port))[1]


async def fetch(port: int, payload: bytes) -> tuple[int, bytes, bytes]:
    conn = await connect(port)
    try:
        return await asyncio.wait_for(conn.request(payload), 30)
    finally:
        conn.transport.close()  # type: ignore[union-attr]


def http(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


class Record:
    def __init__(self) -> None:
        self.lat: list[int] = []  # ns, 200s only
        self.lag: list[int] = []  # open loop: actual send - scheduled send, ns
        self.codes: Counter[str] = Counter()

    async def send(self, conn: Conn, payload: bytes, t0: int) -> bool:
        try:
            status, _, _ = await conn.request(payload)
        except ConnectionError:
            self.codes["other"] += 1
            return False
        if status == 200:
            self.lat.append(clock() - t0)
        self.codes[str(status) if status in (200, 503, 504) else "other"] += 1
        return True


async def closed_loop(port: int, payload: bytes, conc: int, seconds: float, max_requests: int) -> Record:
    rec, budget = Record(), [max_requests]
    conns = [await connect(port) for _ in range(conc)]
    deadline = clock() + int(seconds * 1e9)

    async def worker(conn: Conn) -> None:
        while budget[0] > 0 and clock() < deadline:
            budget[0] -= 1
            if not await rec.send(conn, payload, clock()):
                conn = await connect(port)
        conn.transport.close()  # type: ignore[union-attr]

    await asyncio.gather(*(worker(c) for c in conns))
    return rec


async def open_loop(port: int, payload: bytes, rate: float, seconds: float, max_requests: int, seed: int) -> Record:
    rec, loop, idle = Record(), asyncio.get_running_loop(), asyncio.Queue()  # type: ignore[var-annotated]
    due = np.cumsum(np.random.default_rng(seed).exponential(1e9 / rate, int(rate * seconds * 1.5) + 20)).astype(int)
    due = due[due < seconds * 1e9][:max_requests].tolist()
    conns = [await connect(port) for _ in range(OPEN_CONNS)]
    for c in conns:
        idle.put_nowait(c)

    async def one(t_due: int) -> None:
        conn = await idle.get()
        rec.lag.append(clock() - t_due)
        if await rec.send(conn, payload, t_due):  # timed from the scheduled send
            idle.put_nowait(conn)
        else:
            idle.put_nowait(await connect(port))

    start, tasks, i = clock(), [], 0
    while i < len(due):
        while i < len(due) and start + due[i] <= clock():
            tasks.append(loop.create_task(one(start + due[i])))
            i += 1
        if i < len(due):
            await asyncio.sleep((start + due[i] - clock()) / 1e9)
    _, pending = await asyncio.wait(tasks, timeout=max(10.0, seconds)) if tasks else (set(), set())
    rec.codes["other"] += len(pending)  # unanswered after the drain window
    for t in pending:
        t.cancel()
    for c in conns:
        c.transport.abort()  # type: ignore[union-attr]
    return rec
