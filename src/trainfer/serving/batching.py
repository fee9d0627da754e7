"""Dynamic batching: requests wait in a bounded queue and are run together, up to a maximum batch size.

The worker takes whatever is queued as soon as the model is free, so batches form from the requests
that arrive while the previous batch runs (no added latency at low load, big batches under load).
A positive ``max_delay_ms`` makes the first request of a batch also wait up to that long for others.

``collate`` is the pure part (which queued requests form the next batch); ``Batcher`` is the loop
around it: one worker task that runs each batch either in a background thread, so the event loop keeps
accepting requests meanwhile, or inline on the event loop. The thread only pays off when the loop can
run at the same time as the model: with one usable CPU the two take turns anyway, and a batch that
takes less than the hand-off (a thread wake-up, the GIL and a wake-up of the loop, ~100 us of CPU)
costs more to hand off than to run. ``offload="auto"`` runs a batch inline when recent batches took
under 0.2 ms, or under 2 ms with one usable CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainfer._env import usable_cpus
from trainfer.features.raw import concat_feeds, feed_rows

# auto: batches faster than this (recent average) run inline on the event loop. With one CPU the thread
# cannot run beside the loop, so the hand-off buys only the loop's responsiveness during a batch: worth
# it for long batches (health checks and /metrics must not stall behind a 1 s batch), not for short ones.
INLINE_BELOW_S, INLINE_BELOW_ONE_CPU_S = 2e-4, 2e-3


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already: answer 503 with Retry-After."""


class Expired(Exception):
    """The request waited longer than the timeout before its batch started: answer 504."""


@dataclass(slots=True)
class Pending:
    x: Any  # the request's prepared rows: an array, or a feed dict of arrays (their first axis is the batch axis)
    enqueued: float  # time.monotonic() when it entered the queue
    future: asyncio.Future = field(repr=False)
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = feed_rows(self.x) if isinstance(self.x, dict) else int(self.x.shape[0])


def collate(queue: deque[Pending], max_rows: int, now: float, timeout_s: float) -> tuple[list[Pending], list[Pending]]:
    """Take the next batch from the front of ``queue`` (mutated): (batch, expired).

    Requests are taken in arrival order and never split; rows are added while the total stays within
    ``max_rows`` (a single request larger than that forms a batch of its own). Requests that already
    waited longer than ``timeout_s`` are removed and returned as expired instead.
    """
    batch: list[Pending] = []
    expired: list[Pending] = []
    rows = 0
    while queue:
        head = queue[0]
        if now - head.enqueued > timeout_s:
            expired.append(queue.popleft())
            continue
        if batch and rows + head.rows > max_rows:
            break
        batch.append(queue.popleft())
        rows += head.rows
        if rows >= max_rows:
            break
    return batch, expired


class Batcher:
    """``await batcher.submit(x)`` returns the model's output rows for ``x``."""

    def __init__(self, run: Callable[[Any], np.ndarray], max_batch_size: int = 32, max_delay_ms: float = 0.0,
                 max_queue: int = 256, timeout_ms: float = 1000.0,
                 observe: Callable[[str, float], None] | None = None, offload: str = "auto") -> None:
        if offload not in ("auto", "thread", "inline"):
            raise ValueError(f"offload must be auto, thread or inline, not {offload!r}")
        self._run = run
        self.offload = offload
        self._single_cpu = usable_cpus() < 2
        self._recent_s: float | None = None  # moving average of batch time: decides auto's offloading
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1e3
        self.max_queue = max_queue
        self.timeout_s = timeout_ms / 1e3
        self._observe = observe or (lambda _name, _value: None)
        self._queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainfer-infer")
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Drain: everything already queued is still answered, then the worker stops."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, x: Any) -> np.ndarray:
        if len(self._queue) >= self.max_queue or self._closing:
            raise QueueFull
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(x, time.monotonic(), fut))
        self._wake.set()
        return await fut

    @property
    def inline(self) -> bool:
        """Whether the next batch runs on the event loop rather than in the inference thread."""
        if self.offload != "auto":
            return self.offload == "inline"
        below = INLINE_BELOW_ONE_CPU_S if self._single_cpu else INLINE_BELOW_S
        return self._recent_s is not None and self._recent_s < below  # the first batch: in the thread

    def _timed(self, x: Any) -> tuple[np.ndarray, float]:
        # Timed where the batch runs (thread or loop): the model's own time, not the hand-off back.
        t0 = time.perf_counter()
        out = self._run(x)
        return out, time.perf_counter() - t0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait for more requests until the batch is full or the first one has waited max_delay.
            deadline = self._queue[0].enqueued + self.max_delay_s
            while sum(p.rows for p in self._queue) < self.max_batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch, expired = collate(self._queue, self.max_batch_size, time.monotonic(), self.timeout_s)
            for p in expired:
                if not p.future.done():
                    p.future.set_exception(Expired())
            if not batch:
                continue
            if len(batch) == 1:
                x = batch[0].x
            elif isinstance(batch[0].x, dict):  # whole-graph bundles: one array per raw input, joined per name
                x = concat_feeds([p.x for p in batch])
            else:
                x = np.concatenate([p.x for p in batch])
            self._observe("batch_size", sum(p.rows for p in batch))
            inline = self.inline
            try:
                out, seconds = self._timed(x) if inline else await loop.run_in_executor(self._executor, self._timed, x)
            except Exception as exc:  # a model failure fails this batch's requests, not the server
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._recent_s = seconds if self._recent_s is None else 0.8 * self._recent_s + 0.2 * seconds
            self._observe("inference_s", seconds)
            start = 0
            for p in batch:
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(out[start:start + p.rows])
                start += p.rows
            if inline:
                await asyncio.sleep(0)  # the loop sends these answers and reads new requests before the next batch
