"""Property: under random arrivals, batch sizes, concurrency, failing batches, per-item
exceptions, cancellations and stops, every accepted item ends exactly once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrobatch import (
    AsyncBatcher,
    BatcherStoppedError,
    ItemTimeoutError,
    QueueFullError,
    StopTimeoutError,
)


@dataclass
class Plan:
    max_batch_size: int
    concurrency: int
    max_queue_time: float | str
    max_queue_size: int
    item_timeout: float | None
    gaps: list[float]  # seconds before each arrival
    priorities: list[int]  # priority of item i (cycled)
    aging: float | None
    cancel_before: set[int]  # cancel right after submitting
    cancel_later: set[int]  # cancel after a short while (maybe already dispatched)
    item_errors: set[int]  # the batch function returns an exception for these
    poison: set[int]  # a batch holding one of these raises
    use_many: bool
    stop: str  # "drain" | "force" | "force_midway" | "timeout"
    seed: int


plans = st.builds(
    Plan,
    max_batch_size=st.integers(2, 8),
    concurrency=st.sampled_from([1, 2, 3, -1]),
    max_queue_time=st.sampled_from([0.0, 0.001, 0.003, "auto"]),
    max_queue_size=st.sampled_from([-1, -1, 5, 20]),
    item_timeout=st.sampled_from([None, None, 0.004, 0.05]),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.0005, 0.002]), min_size=1, max_size=40),
    priorities=st.lists(st.integers(-2, 2), min_size=1, max_size=5),
    aging=st.sampled_from([None, 0.002, 1.0]),
    cancel_before=st.sets(st.integers(0, 39), max_size=5),
    cancel_later=st.sets(st.integers(0, 39), max_size=5),
    item_errors=st.sets(st.integers(0, 39), max_size=5),
    poison=st.sets(st.integers(0, 39), max_size=3),
    use_many=st.booleans(),
    stop=st.sampled_from(["drain", "drain", "force", "force_midway", "timeout"]),
    seed=st.integers(0, 2**16),
)


def batcher_options(plan: Plan | ThreadPlan) -> dict[str, Any]:
    """The batcher settings both kinds of plan draw."""
    return {
        "max_batch_size": plan.max_batch_size,
        "concurrency": plan.concurrency,
        "max_queue_time": plan.max_queue_time,
        "max_queue_size": plan.max_queue_size,
        "item_timeout": plan.item_timeout,
    }


async def run(plan: Plan) -> None:
    rng = random.Random(plan.seed)
    dispatched: Counter[int] = Counter()
    sizes: list[int] = []

    async def fn(batch: list[int]) -> list[Any]:
        sizes.append(len(batch))
        dispatched.update(batch)
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
        if any(x in plan.poison for x in batch):
            raise RuntimeError("poisoned batch")
        return [ValueError(x) if x in plan.item_errors else x * 10 for x in batch]

    b = AsyncBatcher(fn, **batcher_options(plan), aging=plan.aging)
    accepted: dict[int, asyncio.Future[Any]] = {}
    later: list[asyncio.Future[Any]] = []
    group: asyncio.Future[list[Any]] | None = None
    for i, gap in enumerate(plan.gaps):
        if gap:
            await asyncio.sleep(gap)
        if plan.stop == "force_midway" and i == len(plan.gaps) // 2:
            await b.stop(force=True)
        try:
            fut = b.process(i, priority=plan.priorities[i % len(plan.priorities)])
        except (QueueFullError, BatcherStoppedError):
            continue
        accepted[i] = fut
        if i in plan.cancel_before:
            fut.cancel()
        if i in plan.cancel_later:
            later.append(fut)
    if plan.use_many:
        try:
            group = b.process_many([1000 + k for k in range(3)])
        except (QueueFullError, BatcherStoppedError):
            group = None
    await asyncio.sleep(0.001)
    for fut in later:
        fut.cancel()
    if plan.stop == "force":
        await b.stop(force=True)
    elif plan.stop == "timeout":
        try:
            await b.stop(timeout=0.002)
        except TimeoutError:
            pass
    else:
        await b.stop()

    # Every accepted item ended: a result, an exception, or its caller's cancellation.
    for i, fut in accepted.items():
        assert fut.done(), f"item {i} never ended"
        if fut.cancelled():
            continue
        exc = fut.exception()
        if exc is None:
            assert fut.result() == i * 10
            assert dispatched[i] == 1
        else:
            assert isinstance(
                exc, (ValueError, RuntimeError, BatcherStoppedError, ItemTimeoutError)
            ), repr(exc)
            if isinstance(exc, ItemTimeoutError):
                assert dispatched[i] == 0, "a timed-out item was dispatched"
    if group is not None:
        assert group.done()
        if not group.cancelled() and group.exception() is None:
            assert group.result() == [10000, 10010, 10020]
    # Nothing was dispatched twice, nothing unknown was dispatched, no batch was too big.
    assert all(n == 1 for n in dispatched.values()), dispatched
    assert set(dispatched) <= set(accepted) | {1000, 1001, 1002}
    assert all(0 < s <= plan.max_batch_size for s in sizes)
    # Cancelled-before-dispatch items never reach the batch function.
    for i in plan.cancel_before:
        if i in accepted:
            assert dispatched[i] == 0
    # The ledger balances: each accepted item was counted under exactly one ending.
    s = b.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.timed_out, s
    assert s.queue_depth == 0 and s.running_batches == 0


@settings(
    max_examples=int(__import__("os").environ.get("FERROBATCH_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans)
def test_every_accepted_item_ends_exactly_once(plan: Plan) -> None:
    asyncio.run(asyncio.wait_for(run(plan), 30))


@dataclass
class ThreadPlan:
    max_batch_size: int
    concurrency: int
    max_queue_time: float | str
    max_queue_size: int
    item_timeout: float | None
    threads: int
    per_thread: int
    blocking: set[int]  # these threads call process_sync instead of submit
    cancel: set[int]  # cancel these concurrent futures right after submitting
    item_errors: set[int]
    poison: set[int]
    stop: str  # "drain" | "force" | "timeout"
    seed: int


thread_plans = st.builds(
    ThreadPlan,
    max_batch_size=st.integers(2, 8),
    concurrency=st.sampled_from([1, 2, -1]),
    max_queue_time=st.sampled_from([0.0, 0.001, 0.003, "auto"]),
    max_queue_size=st.sampled_from([-1, -1, 10]),
    item_timeout=st.sampled_from([None, None, 0.004]),
    threads=st.integers(1, 6),
    per_thread=st.integers(1, 12),
    blocking=st.sets(st.integers(0, 5), max_size=3),
    cancel=st.sets(st.integers(0, 600), max_size=8),
    item_errors=st.sets(st.integers(0, 600), max_size=8),
    poison=st.sets(st.integers(0, 600), max_size=3),
    stop=st.sampled_from(["drain", "drain", "force", "timeout"]),
    seed=st.integers(0, 2**16),
)


def run_threads(plan: ThreadPlan) -> None:
    import threading
    import time

    rng = random.Random(plan.seed)
    lock = threading.Lock()
    dispatched: Counter[int] = Counter()

    def fn(batch: list[int]) -> list[Any]:
        with lock:
            dispatched.update(batch)
            pause = rng.choice([0, 0, 0.001, 0.003])
        time.sleep(pause)
        if any(x in plan.poison for x in batch):
            raise RuntimeError("poisoned batch")
        return [ValueError(x) if x in plan.item_errors else x * 10 for x in batch]

    b = AsyncBatcher(fn, **batcher_options(plan))
    accepted: dict[int, Any] = {}  # item -> concurrent Future, or ("sync", outcome)

    def caller(t: int) -> None:
        for k in range(plan.per_thread):
            i = t * 100 + k
            if t in plan.blocking:
                try:
                    outcome: Any = b.process_sync(i)
                except (QueueFullError, BatcherStoppedError) as e:
                    if not isinstance(e, BatcherStoppedError) or e.reason == "stopped":
                        continue  # refused, never accepted
                    outcome = e
                except Exception as e:
                    outcome = e
                with lock:
                    accepted[i] = ("sync", outcome)
                continue
            try:
                fut = b.submit(i)
            except (QueueFullError, BatcherStoppedError):
                continue
            with lock:
                accepted[i] = fut
            if i in plan.cancel:
                fut.cancel()

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(plan.threads)]
    for w in workers:
        w.start()
    if plan.stop == "force":
        time.sleep(0.002)
        b.stop_sync(force=True)
    for w in workers:
        w.join(30)
    if plan.stop == "timeout":
        try:
            b.stop_sync(timeout=0.002)
        except StopTimeoutError:
            pass
    else:
        b.stop_sync()

    ok_errors = (ValueError, RuntimeError, BatcherStoppedError, ItemTimeoutError)
    for i, got in accepted.items():
        if isinstance(got, tuple):
            outcome = got[1]
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, ok_errors), repr(outcome)
            else:
                assert outcome == i * 10 and dispatched[i] == 1
            continue
        assert got.done(), f"item {i} never ended"
        if got.cancelled():
            assert dispatched[i] == 0, "a cancelled item was dispatched"
            continue
        exc = got.exception(0)
        if exc is None:
            assert got.result() == i * 10 and dispatched[i] == 1
        else:
            assert isinstance(exc, ok_errors), repr(exc)
    assert all(n == 1 for n in dispatched.values()), dispatched
    assert set(dispatched) <= set(accepted)
    s = b.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.timed_out, s


@settings(
    max_examples=int(__import__("os").environ.get("FERROBATCH_EXAMPLES", "60")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(thread_plans)
def test_every_accepted_item_from_threads_ends_exactly_once(plan: ThreadPlan) -> None:
    run_threads(plan)
