"""Callers on plain threads: `process_sync`, `process_many_sync`, `submit`, `stop_sync`, and
sync batch functions on Rust-owned threads shared with asyncio callers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest

from ferrobatch import (
    AsyncBatcher,
    BatcherStoppedError,
    ConfigError,
    ItemTimeoutError,
    QueueFullError,
    StopTimeoutError,
    WrongEventLoopError,
)


class SyncRecorder:
    """A sync batch function that records its batches and the threads it ran on."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, batch: list[Any]) -> list[Any]:
        with self.lock:
            self.batches.append(list(batch))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return [ValueError(x) if x == "bad" else x * 2 for x in batch]

    @property
    def seen(self) -> list[Any]:
        return [x for b in self.batches for x in b]


def gated() -> tuple[threading.Event, Any]:
    """A batch function that returns its batch once the event is set."""
    gate = threading.Event()

    def fn(xs: list[int]) -> list[int]:
        gate.wait(5)
        return xs

    return gate, fn


def test_process_sync_from_many_threads_forms_batches() -> None:
    rec = SyncRecorder()
    b = AsyncBatcher(rec, max_batch_size=16, max_queue_time=0.005)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(b.process_sync, range(500)))
    assert got == [2 * i for i in range(500)]
    assert sorted(rec.seen) == list(range(500))
    assert max(len(x) for x in rec.batches) > 1  # callers shared batches
    assert all(len(x) <= 16 for x in rec.batches)
    b.stop_sync()
    s = b.stats()
    assert (s.submitted, s.completed) == (500, 500)


def test_the_batch_function_runs_on_a_thread_with_no_event_loop() -> None:
    loops: list[Any] = []

    def fn(xs: list[int]) -> list[int]:
        try:
            loops.append(asyncio.get_running_loop())
        except RuntimeError:
            loops.append(None)
        return xs

    b = AsyncBatcher(fn, max_batch_size=4)
    assert b.process_many_sync([1, 2, 3]) == [1, 2, 3]
    assert b.process_many_sync([]) == []
    assert loops == [None]
    b.stop_sync()


def test_submit_returns_a_concurrent_future() -> None:
    rec = SyncRecorder()
    b = AsyncBatcher(rec, max_batch_size=8)
    futs = [b.submit(i) for i in range(20)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futs)
    assert [f.result(5) for f in concurrent.futures.as_completed(futs)]
    assert [f.result() for f in futs] == [2 * i for i in range(20)]
    bad = b.submit("bad")
    assert isinstance(bad.exception(5), ValueError)
    b.stop_sync()


def test_cancelling_a_concurrent_future_before_dispatch_withdraws_the_item() -> None:
    rec = SyncRecorder()
    b = AsyncBatcher(rec, max_batch_size=8, max_queue_time=0.1)
    futs = [b.submit(i) for i in range(4)]
    assert futs[2].cancel()
    assert [f.result(5) for f in (futs[0], futs[1], futs[3])] == [0, 2, 6]
    assert rec.seen == [0, 1, 3]
    b.stop_sync()
    assert b.stats().cancelled == 1


def test_a_dispatched_concurrent_future_cannot_be_cancelled() -> None:
    gate, fn = gated()
    b = AsyncBatcher(fn, max_batch_size=2, max_queue_time=0)
    fut = b.submit(1)
    while not fut.running():
        time.sleep(0.001)
    assert not fut.cancel()
    gate.set()
    assert fut.result(5) == 1
    b.stop_sync()


def test_errors_reach_thread_callers_alone() -> None:
    b = AsyncBatcher(SyncRecorder(), max_batch_size=8, max_queue_time=0.01)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ok = pool.submit(b.process_sync, 1)
        bad = pool.submit(b.process_sync, "bad")
        assert ok.result(5) == 2
        with pytest.raises(ValueError, match="bad"):
            bad.result(5)
    with pytest.raises(ValueError):
        b.process_many_sync([1, "bad"])

    def boom(xs: list[int]) -> list[int]:
        raise KeyError("whole batch")

    c = AsyncBatcher(boom, max_batch_size=4)
    with pytest.raises(KeyError, match="whole batch"):
        c.process_sync(1)
    b.stop_sync()
    c.stop_sync()


def test_item_timeout_and_wait_timeout() -> None:
    b = AsyncBatcher(SyncRecorder(delay=0.3), max_batch_size=2, max_queue_time=0, item_timeout=0.05)
    first = b.submit(1)  # occupies the one concurrency slot for 0.3 s
    with pytest.raises(ItemTimeoutError):
        b.process_sync(2)
    assert first.result(5) == 2
    rec = SyncRecorder()
    slow = AsyncBatcher(rec, max_batch_size=8, max_queue_time=0.3)
    with pytest.raises(TimeoutError, match="withdrawn"):
        slow.process_sync(7, timeout=0.02)
    assert slow.process_sync(8) == 16
    assert 7 not in rec.seen  # the caller gave up before dispatch: withdrawn
    with pytest.raises(ConfigError):
        slow.process_sync(1, timeout=-1)
    b.stop_sync()
    slow.stop_sync()


def test_stop_sync_drains_and_refuses_new_items() -> None:
    rec = SyncRecorder(delay=0.01)
    b = AsyncBatcher(rec, max_batch_size=4, max_queue_time=0.05)
    futs = [b.submit(i) for i in range(10)]
    b.stop_sync()
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [2 * i for i in range(10)]
    with pytest.raises(BatcherStoppedError):
        b.process_sync(1)
    with pytest.raises(BatcherStoppedError):
        b.submit(1)
    b.stop_sync()  # a second stop returns at once


def test_force_stop_sync_fails_running_and_queued_items() -> None:
    gate, fn = gated()
    b = AsyncBatcher(fn, max_batch_size=2, max_queue_time=0)
    running = [b.submit(1), b.submit(2)]
    while not running[0].running():
        time.sleep(0.001)
    queued = [b.submit(3), b.submit(4)]
    b.stop_sync(force=True)
    for f in running + queued:
        assert isinstance(f.exception(5), BatcherStoppedError)
    gate.set()  # the late result is ignored
    time.sleep(0.05)
    s = b.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.timed_out


def test_stop_sync_timeout_force_stops_the_rest() -> None:
    gate, fn = gated()
    b = AsyncBatcher(fn, max_batch_size=2, max_queue_time=0)
    fut = b.submit(1)
    with pytest.raises(StopTimeoutError):
        b.stop_sync(timeout=0.05)
    assert isinstance(fut.exception(5), BatcherStoppedError)
    gate.set()


def test_queue_full_reaches_thread_callers() -> None:
    gate, fn = gated()
    b = AsyncBatcher(fn, max_batch_size=2, max_queue_time=0, max_queue_size=1)
    b.submit(1)
    time.sleep(0.05)  # the first item is running; one more fits in the queue
    b.submit(2)
    with pytest.raises(QueueFullError):
        b.submit(3)
    gate.set()
    b.stop_sync()


def test_threads_and_coroutines_share_batches() -> None:
    rec = SyncRecorder()
    b = AsyncBatcher(rec, max_batch_size=64, max_queue_time=0.05)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        from_threads = [loop.run_in_executor(None, b.process_sync, i) for i in range(8)]
        await asyncio.sleep(0.01)
        from_loop = [b.process(100 + i) for i in range(8)]
        return await asyncio.gather(*from_threads, *from_loop)

    got = asyncio.run(main())
    assert got == [2 * i for i in range(8)] + [2 * (100 + i) for i in range(8)]
    mixed = [x for x in rec.batches if any(i < 100 for i in x) and any(i >= 100 for i in x)]
    assert mixed, rec.batches
    b.stop_sync()


def test_a_sync_batcher_serves_several_event_loops_at_once() -> None:
    b = AsyncBatcher(SyncRecorder(), max_batch_size=64, max_queue_time=0.02)

    def in_own_loop(base: int) -> list[int]:
        async def main() -> list[int]:
            return await asyncio.gather(*(b.process(base + i) for i in range(20)))

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(in_own_loop, [0, 1000, 2000]))
    assert got == [[2 * (base + i) for i in range(20)] for base in (0, 1000, 2000)]
    b.stop_sync()


def test_thread_callers_of_an_async_batch_function_use_its_running_loop() -> None:
    async def fn(xs: list[int]) -> list[int]:
        asyncio.get_running_loop()  # runs on the loop
        return [x + 1 for x in xs]

    b = AsyncBatcher(fn, max_batch_size=16, max_queue_time=0.01)
    with pytest.raises(WrongEventLoopError, match="none yet"):
        b.process_sync(1)

    async def main() -> list[int]:
        assert await b.process(0) == 1  # binds the batcher's loop
        loop = asyncio.get_running_loop()
        with pytest.raises(WrongEventLoopError, match="never return"):
            b.process_sync(1)  # would block the very loop the batch needs
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(None, b.process_sync, i) for i in range(10))
            )
        )

    assert asyncio.run(main()) == [i + 1 for i in range(10)]


def test_blocking_calls_from_a_coroutine_are_refused() -> None:
    b = AsyncBatcher(SyncRecorder(), max_batch_size=4)

    async def main() -> None:
        with pytest.raises(WrongEventLoopError, match=r"await batcher\.process"):
            b.process_sync(1)
        assert await b.process(1) == 2
        fut = b.submit(2)  # does not block: allowed
        assert await asyncio.wrap_future(fut) == 4

    asyncio.run(main())
    b.stop_sync()


async def test_async_stop_drains_thread_items() -> None:
    rec = SyncRecorder(delay=0.01)
    b = AsyncBatcher(rec, max_batch_size=4, max_queue_time=0.05)
    futs = [b.submit(i) for i in range(6)]
    await b.stop()
    assert [f.result(0) for f in futs] == [2 * i for i in range(6)]


def test_a_lambda_returning_a_coroutine_still_needs_a_loop() -> None:
    async def double(xs: list[int]) -> list[int]:
        return [x * 2 for x in xs]

    b = AsyncBatcher(lambda xs: double(xs), max_batch_size=4)
    from ferrobatch import InvalidBatchResultError

    with pytest.raises(InvalidBatchResultError, match="async def"):
        b.process_sync(1)
    b.stop_sync()


def test_an_idle_sync_batcher_is_freed() -> None:
    import gc
    import weakref

    class Sub(AsyncBatcher[int, int]):
        def process_batch(self, batch: list[int]) -> list[int]:  # type: ignore[override]
            return batch

    b = Sub(max_batch_size=4)
    assert b.process_sync(3) == 3
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None
