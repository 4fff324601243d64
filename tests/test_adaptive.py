"""Adaptive batching ("auto"), the latency bound, priorities and aging."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from _helpers import Recorder
from ferrobatch import AsyncBatcher, ConfigError


async def test_auto_dispatches_at_once_when_idle() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=100, max_queue_time="auto")
    t0 = time.monotonic()
    assert await b.process(1) == 2
    assert time.monotonic() - t0 < 0.5  # no window: a fixed 10 s window would hold it
    assert b.stats().effective_wait == 0.0
    await b.stop()


async def test_auto_accumulates_while_slots_are_busy() -> None:
    rec = Recorder(delay=0.1)
    b = AsyncBatcher(rec, max_batch_size=100, max_queue_time="auto", concurrency=1)
    first = b.process(0)
    await asyncio.sleep(0.02)  # the first batch is running
    rest = [b.process(i) for i in range(1, 11)]
    await asyncio.gather(first, *rest)
    assert rec.batches == [[0], list(range(1, 11))]
    await b.stop()


async def test_auto_with_a_latency_bound_batches_more_and_keeps_the_bound() -> None:
    async def costly(xs: list[int]) -> list[int]:
        await asyncio.sleep(0.03 + 0.0001 * len(xs))  # 30 ms per call plus 0.1 ms per item
        return xs

    async def run(**kw: Any) -> tuple[float, float, AsyncBatcher[int, int]]:
        b = AsyncBatcher(costly, max_batch_size=256, concurrency=-1, **kw)
        loop = asyncio.get_running_loop()
        latencies: list[float] = []

        async def one(i: int) -> None:
            t0 = loop.time()
            assert await b.process(i) == i
            latencies.append(loop.time() - t0)

        tasks = []
        for i in range(150):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        s = b.stats()
        await b.stop()
        mean_size = sum(k * v for k, v in s.batch_sizes.items()) / s.batches
        latencies.sort()
        return mean_size, latencies[int(0.9 * len(latencies))], b

    greedy_size, _, _greedy = await run(max_queue_time="auto")
    bounded_size, p90, bounded = await run(max_queue_time="auto", max_latency=0.1)
    assert bounded_size > 2 * greedy_size, (bounded_size, greedy_size)
    assert p90 <= 0.1 + 0.1, p90  # the bound, with slack for a loaded 2-core machine
    s = bounded.stats()
    assert 100 < s.arrival_rate < 5000, s.arrival_rate


async def test_priorities_order_the_next_batch() -> None:
    rec = Recorder(delay=0.05)
    b = AsyncBatcher(rec, max_batch_size=4, max_queue_time=0.001, concurrency=1, aging=None)
    running = b.process(100)
    await asyncio.sleep(0.01)
    futs = [b.process(i, priority=p) for i, p in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 9), (6, -1)]]
    await asyncio.gather(running, *futs)
    assert rec.batches[1] == [5, 2, 4, 1]
    assert rec.batches[2] == [3, 6]
    await b.stop()


async def test_process_many_takes_a_priority() -> None:
    rec = Recorder(delay=0.05)
    b = AsyncBatcher(rec, max_batch_size=10, max_queue_time=0.001, concurrency=1)
    running = b.process(100)
    await asyncio.sleep(0.01)
    low = b.process_many([1, 2])
    high = b.process_many([3, 4], priority=1)
    await asyncio.gather(running, low, high)
    assert rec.batches[1] == [3, 4, 1, 2]
    await b.stop()


async def test_aging_lets_a_starved_item_through() -> None:
    rec = Recorder(delay=0.08)
    b = AsyncBatcher(rec, max_batch_size=2, max_queue_time=0.0, concurrency=1, aging=0.05)
    running = b.process(100)
    await asyncio.sleep(0.005)
    low = b.process(1, priority=0)
    await asyncio.sleep(0.06)  # the low item has now waited longer than `aging`
    highs = [b.process(10 + i, priority=9) for i in range(4)]
    await asyncio.gather(running, low, *highs)
    assert rec.batches[1][0] == 1, rec.batches
    await b.stop()


async def test_without_aging_priority_wins() -> None:
    rec = Recorder(delay=0.08)
    b = AsyncBatcher(rec, max_batch_size=2, max_queue_time=0.0, concurrency=1, aging=None)
    running = b.process(100)
    await asyncio.sleep(0.005)
    low = b.process(1, priority=0)
    await asyncio.sleep(0.06)
    highs = [b.process(10 + i, priority=9) for i in range(4)]
    await asyncio.gather(running, low, *highs)
    assert rec.batches[1] == [10, 11], rec.batches
    await b.stop()


def test_latency_bound_needs_auto_and_bad_windows_are_named() -> None:
    with pytest.raises(ConfigError, match="max_latency"):
        AsyncBatcher(Recorder(), max_latency=0.1)
    with pytest.raises(ConfigError, match="max_queue_time"):
        AsyncBatcher(Recorder(), max_queue_time="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="aging"):
        AsyncBatcher(Recorder(), aging=0)
