"""Dynamic batching (issue 6, part 5): the pure ``collate`` and the ``Batcher`` loop around it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest

from trainfer.serving.batching import Batcher, Expired, Pending, QueueFull, collate


def _pending(rows: int, enqueued: float = 100.0, tag: int = 0) -> Pending:
    # collate never touches the future: a placeholder keeps these tests free of an event loop
    return Pending(np.full((rows, 2), tag, dtype=np.float32), enqueued, None)  # type: ignore[arg-type]


def _tags(items: list[Pending]) -> list[int]:
    return [int(p.x[0, 0]) for p in items]


# ---- collate ----------------------------------------------------------------------------------

def test_collate_empty_queue() -> None:
    queue: deque[Pending] = deque()
    assert collate(queue, max_rows=8, now=100.0, timeout_s=1.0) == ([], [])


def test_collate_takes_requests_in_arrival_order() -> None:
    queue = deque(_pending(1, tag=i) for i in range(5))
    batch, expired = collate(queue, max_rows=8, now=100.0, timeout_s=1.0)
    assert _tags(batch) == [0, 1, 2, 3, 4] and expired == [] and not queue


def test_collate_stops_at_max_rows_and_leaves_the_rest_in_order() -> None:
    queue = deque(_pending(2, tag=i) for i in range(5))
    batch, _ = collate(queue, max_rows=4, now=100.0, timeout_s=1.0)
    assert _tags(batch) == [0, 1] and sum(p.rows for p in batch) == 4
    assert _tags(list(queue)) == [2, 3, 4]
    batch, _ = collate(queue, max_rows=4, now=100.0, timeout_s=1.0)
    assert _tags(batch) == [2, 3] and _tags(list(queue)) == [4]


def test_collate_never_splits_a_request() -> None:
    queue = deque([_pending(3, tag=0), _pending(3, tag=1), _pending(1, tag=2)])
    batch, _ = collate(queue, max_rows=5, now=100.0, timeout_s=1.0)
    # 3 + 3 > 5: the second request waits whole for the next batch, and the small one behind it
    # does not jump the queue either (FIFO)
    assert _tags(batch) == [0] and _tags(list(queue)) == [1, 2]
    assert all(p.rows == 3 for p in batch)


def test_a_request_larger_than_max_rows_forms_its_own_batch() -> None:
    queue = deque([_pending(10, tag=0), _pending(1, tag=1)])
    batch, _ = collate(queue, max_rows=4, now=100.0, timeout_s=1.0)
    assert _tags(batch) == [0] and batch[0].rows == 10
    # behind a smaller one, the big request still waits its turn and then runs alone
    queue = deque([_pending(1, tag=0), _pending(10, tag=1), _pending(1, tag=2)])
    assert _tags(collate(queue, 4, 100.0, 1.0)[0]) == [0]
    assert _tags(collate(queue, 4, 100.0, 1.0)[0]) == [1]
    assert _tags(collate(queue, 4, 100.0, 1.0)[0]) == [2]
    assert not queue


def test_collate_removes_and_returns_expired_requests() -> None:
    now, timeout = 100.0, 0.5
    queue = deque([_pending(1, now - 2.0, tag=0), _pending(1, now - 0.1, tag=1), _pending(1, now - 0.6, tag=2),
                   _pending(1, now, tag=3)])
    batch, expired = collate(queue, max_rows=8, now=now, timeout_s=timeout)
    assert _tags(batch) == [1, 3]
    assert _tags(expired) == [0, 2]
    assert not queue


def test_collate_with_only_expired_requests_returns_no_batch() -> None:
    queue = deque(_pending(1, 0.0, tag=i) for i in range(3))
    batch, expired = collate(queue, max_rows=8, now=100.0, timeout_s=1.0)
    assert batch == [] and _tags(expired) == [0, 1, 2] and not queue


def test_collate_waiting_exactly_the_timeout_is_not_expired() -> None:
    queue = deque([_pending(1, 99.0)])
    batch, expired = collate(queue, max_rows=8, now=100.0, timeout_s=1.0)
    assert len(batch) == 1 and expired == []


# ---- Batcher ----------------------------------------------------------------------------------

class FakeModel:
    """Records the size of every batch; returns 2 * x. Optional gate (blocks run) and failure marker."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s, self.fail_on = delay_s, fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(int(x.shape[0]))
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("model failed on this batch")
        return x * 2


def _rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value, dtype=np.float32)


async def _started(model: FakeModel, offload: str = "thread", **limits: float) -> Batcher:
    # the thread by default: these tests hold the model at a gate while the loop goes on
    batcher = Batcher(model, offload=offload, **limits)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def _wait_for(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the fake model never started")


def test_concurrent_submits_are_collated_into_fewer_batches() -> None:
    model = FakeModel()
    observed: list[tuple[str, float]] = []

    async def main() -> list[np.ndarray]:
        b = await _started(model, max_batch_size=4, max_delay_ms=50, max_queue=64, timeout_ms=5000,
                               observe=lambda k, v: observed.append((k, v)))
        try:
            return await asyncio.gather(*(b.submit(_rows(i)) for i in range(10)))
        finally:
            await b.close()

    t0 = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - t0 < 5
    # every caller gets exactly its own rows back, in order
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i) * 2)
    assert sum(model.batches) == 10
    assert max(model.batches) <= 4
    assert len(model.batches) <= 4, f"10 concurrent single-row requests ran as {model.batches}"
    assert model.batches[0] == 4
    assert all(name.startswith("trainfer-infer") for name in model.threads), "inference must run off the loop"
    kinds = {k for k, _ in observed}
    assert {"batch_size", "inference_s"} <= kinds
    assert [v for k, v in observed if k == "batch_size"] == model.batches


def test_multi_row_requests_are_collated_up_to_max_batch_size() -> None:
    model = FakeModel()

    async def main() -> list[np.ndarray]:
        b = await _started(model, max_batch_size=8, max_delay_ms=50, max_queue=64, timeout_ms=5000)
        try:
            return await asyncio.gather(*(b.submit(_rows(i, 3)) for i in range(6)))
        finally:
            await b.close()

    results = asyncio.run(main())
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i, 3) * 2)
    assert model.batches == [6, 6, 6], model.batches  # 3 + 3 fits in 8, a third request would not


def test_a_lone_request_waits_about_max_delay_and_a_full_batch_does_not_wait() -> None:
    model = FakeModel()

    async def main() -> tuple[float, float]:
        b = await _started(model, max_batch_size=4, max_delay_ms=300, max_queue=64, timeout_ms=5000)
        try:
            t0 = time.perf_counter()
            await b.submit(_rows(1))
            lone = time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.gather(*(b.submit(_rows(i)) for i in range(4)))
            full = time.perf_counter() - t0
            return lone, full
        finally:
            await b.close()

    lone, full = asyncio.run(main())
    assert 0.28 <= lone < 2.0, f"a lone request should wait max_delay (300 ms) for company, waited {lone:.3f} s"
    assert full < 0.2, f"a full batch should run at once, took {full:.3f} s"
    assert model.batches == [1, 4]


def test_max_delay_zero_runs_at_once() -> None:
    model = FakeModel()

    async def main() -> float:
        b = await _started(model, max_batch_size=32, max_delay_ms=0, max_queue=64, timeout_ms=5000)
        try:
            t0 = time.perf_counter()
            await b.submit(_rows(1))
            return time.perf_counter() - t0
        finally:
            await b.close()

    assert asyncio.run(main()) < 0.2


def test_a_full_queue_raises_queue_full() -> None:
    model = FakeModel()
    model.gate.clear()  # the first batch blocks inside the model: later requests stay queued

    async def main() -> None:
        b = await _started(model, max_batch_size=1, max_delay_ms=0, max_queue=2, timeout_ms=10_000)
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await _wait_for(model.started)  # the first request left the queue and is running
        queued = [asyncio.ensure_future(b.submit(_rows(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert b.depth == 2
        with pytest.raises(QueueFull):
            await b.submit(_rows(3))
        assert b.depth == 2  # the rejected request left no trace
        model.gate.set()
        results = await asyncio.gather(first, *queued)
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r, _rows(i) * 2)
        # room again: accepted
        np.testing.assert_array_equal(await b.submit(_rows(4)), _rows(4) * 2)
        await b.close()

    asyncio.run(main())
    assert model.batches == [1, 1, 1, 1]


def test_close_drains_pending_requests() -> None:
    model = FakeModel()

    async def main() -> tuple[list[np.ndarray], float]:
        # a long max_delay: without close() these requests would wait a whole second for company
        b = await _started(model, max_batch_size=100, max_delay_ms=1000, max_queue=64, timeout_ms=10_000)
        futures = [asyncio.ensure_future(b.submit(_rows(i))) for i in range(5)]
        await asyncio.sleep(0.01)
        assert b.depth == 5
        t0 = time.perf_counter()
        await b.close()
        elapsed = time.perf_counter() - t0
        assert all(f.done() for f in futures), "close() returned before every queued request was answered"
        results = [f.result() for f in futures]
        with pytest.raises(QueueFull):  # a closing batcher takes no new work
            await b.submit(_rows(9))
        return results, elapsed

    results, elapsed = asyncio.run(main())
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i) * 2)
    assert sum(model.batches) == 5
    assert elapsed < 0.5, f"close() should not wait out max_delay, took {elapsed:.3f} s"


def test_close_waits_for_the_running_batch_and_the_queue_behind_it() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> list[np.ndarray]:
        b = await _started(model, max_batch_size=1, max_delay_ms=0, max_queue=64, timeout_ms=10_000)
        futures = [asyncio.ensure_future(b.submit(_rows(i))) for i in range(3)]
        await _wait_for(model.started)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        assert not closing.done(), "close() must wait for the batch in the model"
        model.gate.set()
        await closing
        return [f.result() for f in futures]

    results = asyncio.run(main())
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i) * 2)
    assert model.batches == [1, 1, 1]


def test_a_request_that_waits_past_the_timeout_expires() -> None:
    model = FakeModel(delay_s=0.2)

    async def main() -> None:
        b = await _started(model, max_batch_size=1, max_delay_ms=0, max_queue=64, timeout_ms=50)
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await _wait_for(model.started)
        late = asyncio.ensure_future(b.submit(_rows(1)))  # queued behind a 200 ms batch, timeout 50 ms
        np.testing.assert_array_equal(await first, _rows(0) * 2)
        with pytest.raises(Expired):
            await late
        # the batcher carries on
        model.delay_s = 0
        np.testing.assert_array_equal(await b.submit(_rows(2)), _rows(2) * 2)
        await b.close()

    asyncio.run(main())
    assert model.batches == [1, 1]  # the expired request never reached the model


@pytest.mark.parametrize("offload", ["thread", "inline"])
def test_a_failing_run_fails_only_that_batch(offload: str) -> None:
    model = FakeModel(fail_on=-1.0)

    async def main() -> list[object]:
        b = await _started(model, offload=offload, max_batch_size=1, max_delay_ms=0, max_queue=64, timeout_ms=5000)
        try:
            return await asyncio.gather(b.submit(_rows(1)), b.submit(_rows(-1)), b.submit(_rows(3)),
                                        return_exceptions=True)
        finally:
            await b.close()

    ok1, bad, ok3 = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and "model failed" in str(bad)
    np.testing.assert_array_equal(ok1, _rows(1) * 2)
    np.testing.assert_array_equal(ok3, _rows(3) * 2)
    assert model.batches == [1, 1, 1]


def test_a_failing_batch_fails_all_of_its_requests_and_the_next_batch_succeeds() -> None:
    model = FakeModel(fail_on=-1.0)
    model.gate.clear()

    async def main() -> tuple[list[object], np.ndarray]:
        b = await _started(model, max_batch_size=8, max_delay_ms=0, max_queue=64, timeout_ms=5000)
        blocker = asyncio.ensure_future(b.submit(_rows(0)))
        await _wait_for(model.started)
        # these two queue up behind the blocked batch and then run together
        together = [asyncio.ensure_future(b.submit(_rows(v))) for v in (5, -1)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await blocker
        results = await asyncio.gather(*together, return_exceptions=True)
        after = await b.submit(_rows(7))
        await b.close()
        return results, after

    results, after = asyncio.run(main())
    assert model.batches == [1, 2, 1]
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_array_equal(after, _rows(7) * 2)


def test_a_caller_that_goes_away_does_not_break_the_batcher() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> np.ndarray:
        b = await _started(model, max_batch_size=1, max_delay_ms=0, max_queue=64, timeout_ms=5000)
        running = asyncio.ensure_future(b.submit(_rows(0)))
        await _wait_for(model.started)
        queued = asyncio.ensure_future(b.submit(_rows(1)))
        await asyncio.sleep(0.01)
        running.cancel()
        queued.cancel()
        model.gate.set()
        out = await asyncio.wait_for(b.submit(_rows(2)), 5)
        await b.close()
        return out

    np.testing.assert_array_equal(asyncio.run(main()), _rows(2) * 2)


def _ten_concurrent(b: Batcher) -> list[np.ndarray]:
    async def main() -> list[np.ndarray]:
        b.start()
        try:
            return await asyncio.gather(*(b.submit(_rows(i)) for i in range(10)))
        finally:
            await b.close()

    return asyncio.run(main())


def test_inline_runs_batches_on_the_event_loop_and_answers_everyone() -> None:
    model = FakeModel()
    results = _ten_concurrent(Batcher(model, max_batch_size=4, max_delay_ms=0, max_queue=64, timeout_ms=5000,
                                      offload="inline"))
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i) * 2)
    assert model.threads == {threading.current_thread().name}, model.threads
    assert model.batches == [4, 4, 2]  # all ten were queued before the worker ran: collated, in order


@pytest.mark.parametrize("cpus, delay_s, inline_after_first", [(2.0, 0.0, True), (2.0, 0.01, False),
                                                                (1.0, 0.0005, True), (1.0, 0.05, False)])
def test_auto_offload_keeps_the_thread_only_where_it_pays(monkeypatch: pytest.MonkeyPatch, cpus: float,
                                                          delay_s: float, inline_after_first: bool) -> None:
    # Auto runs inline when recent batches were shorter than the hand-off costs (0.2 ms), or, with a
    # single CPU where loop and model take turns anyway, shorter than 2 ms; a long batch keeps the
    # loop free (health checks must not stall behind it). The first batch always takes the thread.
    monkeypatch.setattr("trainfer.serving.batching.usable_cpus", lambda: cpus)
    model = FakeModel(delay_s=delay_s)
    b = Batcher(model, max_batch_size=1, max_delay_ms=0, max_queue=64, timeout_ms=5000)
    assert not b.inline
    results = _ten_concurrent(b)
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, _rows(i) * 2)
    assert b.inline == inline_after_first
    loop_thread = threading.current_thread().name
    assert (loop_thread in model.threads) == inline_after_first
    assert any(t.startswith("trainfer-infer") for t in model.threads)


def test_offload_must_be_known() -> None:
    with pytest.raises(ValueError, match="offload"):
        Batcher(FakeModel(), offload="gpu")
