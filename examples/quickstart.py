"""Quickstart: batch 10,000 awaits into a few hundred batch calls.

Run with `python examples/quickstart.py` after `pip install .`.
"""

from __future__ import annotations

import asyncio
import time

from ferrobatch import AsyncBatcher, batch


class Doubler(AsyncBatcher[int, int]):
    """A batcher whose batch function doubles every item."""

    async def process_batch(self, batch: list[int]) -> list[int]:
        await asyncio.sleep(0.001)  # stands in for one model call or one HTTP request
        return [x * 2 for x in batch]


@batch(max_batch_size=32, max_queue_time=0.005)
async def shout(texts: list[str]) -> list[str]:
    """Called with lists of texts; callers pass one text each."""
    return [t.upper() for t in texts]


async def main() -> None:
    n = 10_000
    async with Doubler(max_batch_size=64, max_queue_time=0.01, concurrency=4) as doubler:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(doubler.process(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
        assert results == [2 * i for i in range(n)]
        print(f"one await:      {await doubler.process(21)}")
        print(f"process_many:   {await doubler.process_many([1, 2, 3])}")
        stats = doubler.stats()
    print(f"{n:,} awaits in {elapsed * 1000:.0f} ms -> {stats.batches:,} batch calls")
    print(f"batch sizes:    {dict(sorted(stats.batch_sizes.items()))}")
    print(f"queue wait p99: {stats.queue_wait.p99 * 1000:.2f} ms")

    print(f"@batch:         {await shout('hello')}")
    await shout.stop()


if __name__ == "__main__":
    asyncio.run(main())
