"""In-flight deduplication (`dedupe=`): identical items waiting or running share one slot; the
batch function sees each key once and every caller gets the result or the exception."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrobatch import AsyncBatcher, BatcherStoppedError, ConfigError
from ferrobatch.openai import Embeddings
from ferrobatch.testing import FakeServer, fake_embedding


async def test_identical_items_in_flight_run_once() -> None:
    seen: list[list[int]] = []

    async def fn(batch: list[int]) -> list[int]:
        seen.append(batch)
        return [x * 10 for x in batch]

    b = AsyncBatcher(fn, max_batch_size=8, max_queue_time=0.01, dedupe=True)
    results = await asyncio.gather(*(b.process(x) for x in [1, 2, 1, 3, 2, 1]))
    assert results == [10, 20, 10, 30, 20, 10]
    assert seen == [[1, 2, 3]]
    s = b.stats()
    assert s.deduplicated == 3 and s.submitted == 3 and s.completed == 3
    # Once ended, a key is not remembered: the next call runs again (no cache).
    assert await b.process(1) == 10
    assert seen[-1] == [1]
    await b.stop()


async def test_a_key_function_and_a_shared_exception() -> None:
    calls: list[list[str]] = []

    async def fn(batch: list[str]) -> list[Any]:
        calls.append(batch)
        return [ValueError(f"bad {x}") if x.startswith("x") else x.upper() for x in batch]

    b = AsyncBatcher(fn, max_batch_size=8, max_queue_time=0.01, dedupe=str.lower)
    out = await asyncio.gather(
        b.process("a"), b.process("A"), b.process("x1"), b.process("X1"), return_exceptions=True
    )
    assert out[0] == "A" and out[1] == "A"  # "A" joined "a": the batch saw "a" only
    assert isinstance(out[2], ValueError) and out[2] is out[3]
    assert calls == [["a", "x1"]]
    await b.stop()


async def test_unhashable_items_are_refused_at_once() -> None:
    b = AsyncBatcher(lambda batch: batch, dedupe=True)
    with pytest.raises(TypeError):
        b.process([1, 2])
    assert b.stats().submitted == 0
    await b.stop()


def test_dedupe_must_be_a_bool_or_a_function() -> None:
    with pytest.raises(ConfigError, match="dedupe"):
        AsyncBatcher(lambda batch: batch, dedupe=3)  # type: ignore[arg-type]


async def test_one_caller_cancelling_leaves_the_others_their_result() -> None:
    gate = asyncio.Event()
    ran: list[list[int]] = []

    async def fn(batch: list[int]) -> list[int]:
        ran.append(batch)
        await gate.wait()
        return batch

    b = AsyncBatcher(fn, max_batch_size=4, max_queue_time=0.01, dedupe=True)
    first, second = b.process(7), b.process(7)
    first.cancel()
    await asyncio.sleep(0.05)
    gate.set()
    assert await second == 7
    # Every caller of a waiting key cancels: it never runs.
    gate.clear()
    a, c = b.process(8), b.process(8)
    a.cancel()
    c.cancel()
    await asyncio.sleep(0.05)
    assert [8] not in ran
    gate.set()
    await b.stop()


def test_threads_share_one_slot_per_key() -> None:
    ran: Counter[int] = Counter()
    started = threading.Event()
    release = threading.Event()

    def fn(batch: list[int]) -> list[int]:
        ran.update(batch)
        started.set()
        release.wait(10)
        return [x + 1 for x in batch]

    b = AsyncBatcher(fn, max_batch_size=64, max_queue_time=0.05, dedupe=True)
    out: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        r = b.process_sync(5, timeout=30)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    started.wait(10)
    release.set()
    for t in threads:
        t.join()
    assert out == [6] * 32
    assert ran[5] <= 2  # joined while waiting or running; at most a late straggler ran again
    assert b.stats().deduplicated == 32 - ran[5]
    b.stop_sync()


async def test_embeddings_send_identical_texts_once_and_copy_the_vector(
    fake_ai_server: FakeServer,
) -> None:
    emb = Embeddings(
        base_url=fake_ai_server.openai_base_url, api_key="k", dimensions=8, max_queue_time=0.02
    )
    vectors = await asyncio.gather(*(emb.embed(t) for t in ["same", "other", "same", "same"]))
    sent = [t for r in fake_ai_server.requests("/embeddings") for t in r["body"]["input"]]
    assert sorted(sent) == ["other", "same"]
    want = fake_embedding("same", 8)
    for i in (0, 2, 3):
        assert vectors[i] == pytest.approx(want, abs=1e-6)
    assert len({id(vectors[i]) for i in (0, 2, 3)}) == 3  # each caller its own list
    vectors[0][0] = 99.0
    assert vectors[2][0] == pytest.approx(want[0], abs=1e-6)
    assert emb.stats().deduplicated == 2
    await emb.stop()

    plain = Embeddings(
        base_url=fake_ai_server.openai_base_url,
        api_key="k",
        dimensions=8,
        max_queue_time=0.02,
        dedupe=False,
    )
    fake_ai_server.clear_requests()
    await asyncio.gather(*(plain.embed("same") for _ in range(3)))
    sent = [t for r in fake_ai_server.requests("/embeddings") for t in r["body"]["input"]]
    assert sent == ["same"] * 3
    await plain.stop()


# --- exactly once, with duplicates ---------------------------------------------------------


@dataclass
class Plan:
    keys: list[int]  # the item of each call (small range: many duplicates)
    gaps: list[float]
    max_batch_size: int
    concurrency: int
    cancel: set[int]
    errors: set[int]  # keys whose result is an exception
    force_stop: bool


plans = st.builds(
    Plan,
    keys=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001]), min_size=1, max_size=5),
    max_batch_size=st.integers(2, 6),
    concurrency=st.sampled_from([1, 2, -1]),
    cancel=st.sets(st.integers(0, 39), max_size=6),
    errors=st.sets(st.integers(0, 5), max_size=2),
    force_stop=st.booleans(),
)


async def run(plan: Plan) -> None:
    in_flight: set[int] = set()
    dispatched: Counter[int] = Counter()

    async def fn(batch: list[int]) -> list[Any]:
        assert len(set(batch)) == len(batch), f"a batch held a key twice: {batch}"
        assert not in_flight & set(batch), "a key ran while it was already running"
        in_flight.update(batch)
        dispatched.update(batch)
        await asyncio.sleep(0.001)
        in_flight.difference_update(batch)
        return [KeyError(k) if k in plan.errors else k * 10 for k in batch]

    b = AsyncBatcher(
        fn,
        max_batch_size=plan.max_batch_size,
        concurrency=plan.concurrency,
        max_queue_time=0.001,
        dedupe=True,
    )
    futs = []
    for i, k in enumerate(plan.keys):
        gap = plan.gaps[i % len(plan.gaps)]
        if gap:
            await asyncio.sleep(gap)
        f = b.process(k)
        futs.append((k, f))
        if i in plan.cancel:
            f.cancel()
    await b.stop(force=plan.force_stop)
    for k, f in futs:
        assert f.done()
        if f.cancelled():
            continue
        exc = f.exception()
        if exc is None:
            assert f.result() == k * 10
        else:
            assert isinstance(exc, (KeyError, BatcherStoppedError)), repr(exc)
    s = b.stats()
    assert s.submitted + s.deduplicated == len(plan.keys)
    assert s.submitted == s.completed + s.failed + s.cancelled + s.timed_out
    assert s.queue_depth == 0 and s.running_batches == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_every_caller_ends_exactly_once_with_duplicates(plan: Plan) -> None:
    asyncio.run(asyncio.wait_for(run(plan), 30))


class SlowKey:
    """A key whose `==` and hash run Python code that lets other threads take the GIL."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        time.sleep(0)
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        time.sleep(0)
        return isinstance(other, SlowKey) and other.n == self.n


def test_python_level_keys_from_many_threads_never_deadlock() -> None:
    def fn(batch: list[SlowKey]) -> list[int]:
        time.sleep(0.001)
        return [k.n * 2 for k in batch]

    b = AsyncBatcher(fn, max_batch_size=8, max_queue_time=0.001, concurrency=2, dedupe=True)
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        try:
            for i in range(60):
                n = (seed + i) % 5
                if i % 3 == 0:
                    assert b.submit(SlowKey(n)).result(timeout=30) == n * 2
                else:
                    assert b.process_sync(SlowKey(n), timeout=30) == n * 2
        except BaseException as e:  # recorded, and fails the test below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller is stuck"
    assert errors == []
    s = b.stats()
    assert s.submitted + s.deduplicated == 12 * 60
    b.stop_sync()
