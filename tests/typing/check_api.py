"""Checked by `mypy --strict` (not run): the public API's types read as a user expects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys

from ferrobatch import (
    AsyncBatcher,
    BatchedFunction,
    BatcherStats,
    FerrobatchError,
    ItemFuture,
    QueueFullException,
    batch,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover
    from typing_extensions import assert_type


class Doubler(AsyncBatcher[int, int]):
    async def process_batch(self, batch: list[int]) -> list[int]:
        return [x * 2 for x in batch]


async def embed_fn(texts: list[str]) -> list[list[float]]:
    return [[float(len(t))] for t in texts]


@batch(max_batch_size=32, max_queue_time=0.005)
async def embed(texts: list[str]) -> list[list[float]]:
    return [[float(len(t))] for t in texts]


async def main() -> None:
    d = Doubler(max_batch_size=64, concurrency=4)
    assert_type(d.process(21), ItemFuture[int])
    # Both a Future and a coroutine to the type checker, as at runtime.
    assert_type(await asyncio.create_task(d.process(1)), int)
    assert_type(await asyncio.wait_for(d.process(1), 1.0), int)
    assert_type(await asyncio.shield(d.process(1)), int)
    assert_type(await asyncio.gather(d.process(1), d.process(2)), tuple[int, int])
    assert_type(await d.process(21), int)
    assert_type(await d.process_many([1, 2]), list[int])
    assert_type(d.stats(), BatcherStats)
    assert_type(d.stats().queue_wait.p99, float)
    await d.stop(force=False, timeout=1.0)

    b = AsyncBatcher(embed_fn, max_batch_size=32)
    assert_type(await b.process("x"), list[float])
    assert_type(await b.process("urgent", priority=5), list[float])
    assert_type(await b.process_many(["a", "b"], priority=1), list[list[float]])

    auto = AsyncBatcher(embed_fn, max_queue_time="auto", max_latency=0.2, aging=None)
    assert_type(auto.stats().effective_wait, float)
    assert_type(auto.stats().arrival_rate, float)

    assert_type(embed, BatchedFunction[str, list[float]])
    assert_type(await embed("one text"), list[float])

    try:
        await asyncio.gather(d.process(1), b.process("y"))
    except QueueFullException as e:
        assert isinstance(e, FerrobatchError)


def on_a_thread() -> None:
    def double(xs: list[int]) -> list[int]:
        return [x * 2 for x in xs]

    t = AsyncBatcher(double, max_batch_size=64)
    assert_type(t.process_sync(1), int)
    assert_type(t.process_sync(1, priority=2, timeout=1.0), int)
    assert_type(t.process_many_sync([1, 2]), list[int])
    assert_type(t.submit(1), concurrent.futures.Future[int])
    assert_type(asyncio.run(t.process(1)), int)
    t.stop_sync(timeout=5.0)
