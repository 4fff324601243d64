"""Cancellation, item timeouts, stopping, event-loop binding and garbage collection."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import pytest

from _helpers import Recorder
from ferrobatch import (
    AsyncBatcher,
    BatcherStoppedError,
    FerrobatchError,
    ItemTimeoutError,
    StopTimeoutError,
    WrongEventLoopError,
)


async def test_cancelled_before_dispatch_never_reaches_the_batch_function() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=10, max_queue_time=0.05)
    futs = [b.process(i) for i in range(5)]
    futs[1].cancel()
    futs[3].cancel()
    await asyncio.sleep(0)
    done = await asyncio.gather(*futs, return_exceptions=True)
    assert rec.seen == [0, 2, 4]
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], done[2], done[4]] == [0, 4, 8]
    assert b.stats().cancelled == 2
    await b.stop()


async def test_all_cancelled_batch_is_not_run() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=10, max_queue_time=0.01)
    for f in [b.process(i) for i in range(3)]:
        f.cancel()
    await asyncio.sleep(0.1)
    assert rec.batches == []
    assert b.stats().cancelled == 3
    assert await b.process(1) == 2
    await b.stop()


async def test_cancelled_after_dispatch_discards_the_result_quietly() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def fn(xs: list[int]) -> list[int]:
        started.set()
        await release.wait()
        return xs

    b = AsyncBatcher(fn, max_batch_size=2)
    f1, f2 = b.process(1), b.process(2)
    await started.wait()
    f1.cancel()
    release.set()
    assert await f2 == 2
    assert f1.cancelled()
    s = b.stats()
    assert s.completed == 2 and s.running_batches == 0
    await b.stop()


async def test_process_many_cancel_drops_its_undispatched_items() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=100, max_queue_time=0.05)
    many = b.process_many([1, 2, 3])
    single = b.process(4)
    many.cancel()
    assert await single == 8
    assert rec.seen == [4]
    await b.stop()


async def test_item_timeout_fails_waiting_items_and_they_never_run() -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def fn(xs: list[int]) -> list[int]:
        seen.extend(xs)
        await release.wait()
        return xs

    b = AsyncBatcher(fn, max_batch_size=2, concurrency=1, item_timeout=0.1)
    running = [b.process(1), b.process(2)]
    await asyncio.sleep(0.01)
    waiting = b.process(3)
    t0 = time.monotonic()
    with pytest.raises(ItemTimeoutError) as info:
        await waiting
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == pytest.approx(0.1)
    assert 0.08 <= time.monotonic() - t0 < 2.0
    release.set()
    assert await asyncio.gather(*running) == [1, 2]
    await asyncio.sleep(0.05)
    assert seen == [1, 2], "the timed-out item is not dispatched later"
    assert b.stats().timed_out == 1
    await b.stop()


async def test_stop_drains_every_accepted_item_without_waiting_for_windows() -> None:
    rec = Recorder(delay=0.01)
    b = AsyncBatcher(rec, max_batch_size=4, max_queue_time=60.0, concurrency=1)
    futs = [b.process(i) for i in range(10)]
    t0 = time.monotonic()
    await b.stop()
    assert time.monotonic() - t0 < 10.0, "a 60 s window did not hold the drain"
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [2 * i for i in range(10)]
    with pytest.raises(RuntimeError) as info:
        b.process(11)
    assert isinstance(info.value, BatcherStoppedError)
    assert info.value.reason == "not_accepting"
    with pytest.raises(BatcherStoppedError):
        b.process_many([1])


async def test_stop_is_idempotent_and_works_on_an_unused_batcher() -> None:
    b = AsyncBatcher(Recorder())
    await b.stop()
    await b.stop()
    b2 = AsyncBatcher(Recorder())
    await b2.process(1)
    await b2.stop()
    await b2.stop(force=True)


async def test_force_stop_fails_queued_and_running_items() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def fn(xs: list[int]) -> list[int]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return xs

    b = AsyncBatcher(fn, max_batch_size=2, concurrency=1)
    running = [b.process(1), b.process(2)]
    await started.wait()
    queued = [b.process(i) for i in range(3, 8)]
    await b.stop(force=True)
    for f in running + queued:
        assert f.done()
        exc = f.exception()
        assert isinstance(exc, BatcherStoppedError), exc
        assert exc.reason == "force_stopped"
    await asyncio.sleep(0)
    assert cancelled.is_set(), "the running batch call was cancelled"
    s = b.stats()
    assert s.failed == 7 and s.running_batches == 0 and s.queue_depth == 0


async def test_force_stop_does_not_wait_for_a_batch_that_ignores_cancellation() -> None:
    started = asyncio.Event()

    async def stubborn(xs: list[int]) -> list[int]:
        started.set()
        while True:
            try:
                await asyncio.sleep(0.01)
                if stubborn.done:  # type: ignore[attr-defined]
                    return xs
            except asyncio.CancelledError:
                continue

    stubborn.done = False  # type: ignore[attr-defined]
    b = AsyncBatcher(stubborn, max_batch_size=2)
    futs = [b.process(1), b.process(2)]
    await started.wait()
    await asyncio.wait_for(b.stop(force=True), 5)
    assert all(isinstance(f.exception(), BatcherStoppedError) for f in futs)
    stubborn.done = True  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)


async def test_stop_timeout_force_stops_the_rest_and_raises() -> None:
    async def slow(xs: list[int]) -> list[int]:
        await asyncio.sleep(60)
        return xs

    b = AsyncBatcher(slow, max_batch_size=2, concurrency=1)
    futs = [b.process(i) for i in range(4)]
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(StopTimeoutError) as info:
        await b.stop(timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 < 5.0
    assert all(isinstance(f.exception(), BatcherStoppedError) for f in futs)


async def test_context_manager_drains_on_exit() -> None:
    rec = Recorder()
    async with AsyncBatcher(rec, max_batch_size=100, max_queue_time=60.0) as b:
        futs = [b.process(i) for i in range(3)]
    assert [f.result() for f in futs] == [0, 2, 4]
    assert not await b.is_running()


async def test_sync_batch_force_stop_fails_items_while_the_thread_finishes() -> None:
    gate = threading.Event()

    def blocking(xs: list[int]) -> list[int]:
        gate.wait(10)
        return xs

    b = AsyncBatcher(blocking, max_batch_size=2)
    futs = [b.process(1), b.process(2)]
    await asyncio.sleep(0.05)
    await asyncio.wait_for(b.stop(force=True), 5)
    assert all(isinstance(f.exception(), BatcherStoppedError) for f in futs)
    gate.set()
    await asyncio.sleep(0.05)


def test_a_batcher_belongs_to_the_loop_it_was_first_used_on() -> None:
    b = AsyncBatcher(Recorder(), max_batch_size=2)

    async def use() -> Any:
        return await b.process(1)

    assert asyncio.run(use()) == 2
    with pytest.raises(WrongEventLoopError, match="another event loop") as info:
        asyncio.run(use())
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, FerrobatchError)


def test_process_outside_a_running_loop_queues_when_first_awaited() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=4)
    fut = b.process(1)
    assert not fut.done() and b.stats().submitted == 0
    with pytest.raises(RuntimeError, match="no running event loop"):
        fut.send(None)  # only a running loop can take it
    assert asyncio.run(fut) == 2  # type: ignore[arg-type]
    assert rec.seen == [1]


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        rec = Recorder()
        b = AsyncBatcher(rec, max_batch_size=16, max_queue_time=0.002, concurrency=2)
        out = await asyncio.gather(*(b.process(i) for i in range(1000)))
        late = await b.process(5000)  # dispatched by the timer thread, through the loop
        many = await b.process_many(range(100))
        await b.stop()
        return [*out, late, *many]

    out = uvloop.run(main())
    assert out[:1000] == [2 * i for i in range(1000)]
    assert out[1000] == 10000
    assert out[1001:] == [2 * i for i in range(100)]


async def test_a_dropped_batcher_fails_its_queued_items() -> None:
    b: AsyncBatcher[int, int] | None = AsyncBatcher(
        Recorder(), max_batch_size=10, max_queue_time=60
    )
    assert b is not None
    fut = b.process(1)
    del b
    gc.collect()
    with pytest.raises(BatcherStoppedError) as info:
        await asyncio.wait_for(fut, 5)
    assert info.value.reason == "dropped"


async def test_an_idle_batcher_is_garbage_collected() -> None:
    import weakref

    b = AsyncBatcher(Recorder(), max_batch_size=2)
    assert await b.process(1) == 2
    await asyncio.sleep(0.01)  # the batch's task ends one loop step after its results
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None


async def test_stop_returns_only_after_timer_work_reached_its_callers() -> None:
    """The timer thread expires an item while the loop holds the GIL finishing the last batch;
    stop() must not return before that expiry has reached the item's future."""

    async def hog(xs: list[int]) -> list[int]:
        end = time.monotonic() + 0.05
        while time.monotonic() < end:  # holds the GIL: the timer thread cannot cross yet
            pass
        return xs

    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        for _ in range(5):
            b = AsyncBatcher(hog, max_batch_size=2, max_queue_time=0.0, item_timeout=0.005)
            first = b.process(1)
            late = b.process(2)  # waits behind the running batch, times out meanwhile
            await b.stop()
            assert first.done() and late.done(), "stop() returned with an item unresolved"
            assert isinstance(late.exception(), ItemTimeoutError)
    finally:
        sys.setswitchinterval(old)


async def test_a_batch_delivered_after_force_stop_is_aborted_not_run() -> None:
    """The timer thread forms a batch; before its delivery runs on the loop, stop(force=True)."""
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=100, max_queue_time=0.02)
    fut = b.process(1)
    time.sleep(0.1)  # block the loop: the window expires and the batch waits to cross
    await b.stop(force=True)
    assert isinstance(fut.exception(), BatcherStoppedError)
    assert rec.batches == []
