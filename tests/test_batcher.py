"""AsyncBatcher behaviour: batching, results, errors, the async-batcher compatible surface."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import ferrobatch
from _helpers import Recorder
from ferrobatch import (
    AsyncBatcher,
    BatchSizeMismatchError,
    ConfigError,
    FerrobatchError,
    InvalidBatchResultError,
    QueueFullError,
    QueueFullException,
    batch,
)


class Doubler(AsyncBatcher[int, int]):
    async def process_batch(self, batch: list[int]) -> list[int]:
        return [x * 2 for x in batch]


class SyncDoubler(AsyncBatcher[int, int]):
    def process_batch(self, batch: list[int]) -> list[int]:  # type: ignore[override]
        return [x * 2 for x in batch]


async def test_subclass_process_and_process_many() -> None:
    b = Doubler(max_batch_size=64, max_queue_time=0.01, concurrency=4)
    assert await b.process(21) == 42
    assert await b.process_many([1, 2, 3]) == [2, 4, 6]
    assert await b.process_many([]) == []
    await b.stop()


async def test_sync_process_batch_runs_in_the_given_executor() -> None:
    threads: set[str] = set()

    def fn(batch: list[int]) -> list[int]:
        import threading

        threads.add(threading.current_thread().name)
        return [x + 1 for x in batch]

    with ThreadPoolExecutor(1, thread_name_prefix="mine") as pool:
        b = AsyncBatcher(fn, max_batch_size=8, executor=pool)
        assert await asyncio.gather(*(b.process(i) for i in range(20))) == list(range(1, 21))
        await b.stop()
    assert threads and all(t.startswith("mine") for t in threads)
    sd = SyncDoubler(max_batch_size=4)
    assert await sd.process(5) == 10
    await sd.stop()


async def test_process_returns_a_future_asyncio_takes_as_is() -> None:
    b = Doubler(max_batch_size=4)
    fut = b.process(1)
    assert asyncio.isfuture(fut) and asyncio.iscoroutine(fut)
    if sys.version_info >= (3, 10):  # 3.9 looks for a coroutine first and makes a Task
        assert asyncio.ensure_future(fut) is fut  # gather/wait_for/shield take it as is
    assert fut.get_loop() is asyncio.get_running_loop()
    assert await fut == 2
    await b.stop()


async def test_callable_and_decorator_forms() -> None:
    rec = Recorder()
    async with AsyncBatcher(rec, max_batch_size=32) as b:
        assert await asyncio.gather(*(b.process(i) for i in range(10))) == [
            2 * i for i in range(10)
        ]

    @batch(max_batch_size=32, max_queue_time=0.005)
    async def embed(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    assert await embed("one text") == 8
    assert await embed.many(["a", "bb"]) == [1, 2]
    assert embed.__name__ == "embed"
    assert embed.stats().completed == 3
    await embed.stop()

    @batch
    def plain(xs: list[int]) -> list[int]:
        return [x * 3 for x in xs]

    assert await plain(2) == 6
    await plain.stop()


async def test_batches_respect_max_size_and_keep_arrival_order() -> None:
    rec = Recorder()
    b = AsyncBatcher(rec, max_batch_size=5, max_queue_time=0.05, concurrency=1)
    results = await asyncio.gather(*(b.process(i) for i in range(23)))
    assert results == [2 * i for i in range(23)]
    assert all(len(x) <= 5 for x in rec.batches)
    assert rec.seen == list(range(23))
    assert [len(x) for x in rec.batches[:4]] == [5, 5, 5, 5]
    await b.stop()


async def test_partial_batch_waits_max_queue_time_from_its_first_item() -> None:
    rec = Recorder()
    window = 0.2
    b = AsyncBatcher(rec, max_batch_size=100, max_queue_time=window)
    t0 = time.monotonic()
    first = b.process(1)
    await asyncio.sleep(0.05)
    second = b.process(2)
    assert await first == 2
    elapsed = time.monotonic() - t0
    assert await second == 4
    assert rec.batches == [[1, 2]], "both items went in one batch"
    assert elapsed >= window * 0.95
    assert elapsed < window + 1.0  # generous: a loaded 2-core machine
    await b.stop()


async def test_full_batch_does_not_wait_for_the_window() -> None:
    b = Doubler(max_batch_size=4, max_queue_time=30.0)
    t0 = time.monotonic()
    assert await asyncio.gather(*(b.process(i) for i in range(4))) == [0, 2, 4, 6]
    assert time.monotonic() - t0 < 5.0
    await b.stop()


async def test_concurrency_bounds_running_batches_and_refills_full() -> None:
    rec = Recorder(delay=0.05)
    b = AsyncBatcher(rec, max_batch_size=4, max_queue_time=0.001, concurrency=2)
    await asyncio.gather(*(b.process(i) for i in range(40)))
    assert rec.max_running == 2
    # While both slots were busy items piled up, so later batches are full.
    assert [len(x) for x in rec.batches[2:-1]] == [4] * (len(rec.batches) - 3)
    await b.stop()


async def test_unlimited_concurrency_runs_batches_together() -> None:
    rec = Recorder(delay=0.05)
    b = AsyncBatcher(rec, max_batch_size=2, concurrency=-1)
    await asyncio.gather(*(b.process(i) for i in range(10)))
    assert rec.max_running == 5
    await b.stop()


async def test_none_result_gives_every_item_none() -> None:
    async def fn(xs: list[int]) -> None:
        return None

    b = AsyncBatcher(fn, max_batch_size=3)
    assert await asyncio.gather(*(b.process(i) for i in range(3))) == [None, None, None]
    await b.stop()


async def test_exception_in_a_result_slot_goes_to_that_caller_only() -> None:
    async def fn(xs: list[int]) -> list[Any]:
        return [ValueError(f"bad {x}") if x == 1 else x for x in xs]

    b = AsyncBatcher(fn, max_batch_size=3)
    outs = await asyncio.gather(*(b.process(i) for i in range(3)), return_exceptions=True)
    assert outs[0] == 0 and outs[2] == 2
    assert isinstance(outs[1], ValueError) and str(outs[1]) == "bad 1"
    assert b.stats().failed == 1 and b.stats().completed == 2
    await b.stop()


async def test_raising_batch_fails_its_items_only_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(fail_on=3)
    b = AsyncBatcher(rec, max_batch_size=3, max_queue_time=0.001)
    with caplog.at_level(logging.ERROR, logger="ferrobatch"):
        outs = await asyncio.gather(*(b.process(i) for i in range(9)), return_exceptions=True)
    assert outs[:3] == [0, 2, 4]
    assert all(isinstance(o, RuntimeError) and str(o) == "boom on 3" for o in outs[3:6])
    assert outs[6:] == [12, 14, 16]
    (record,) = [r for r in caplog.records if "batch of 3 items failed" in r.getMessage()]
    assert (record.batch_size, record.error_type) == (3, "RuntimeError")  # structured fields
    assert await b.process(100) == 200, "the engine keeps running"
    await b.stop()


async def test_a_raising_sync_batch_is_logged_with_the_same_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fn(xs: list[int]) -> list[int]:
        raise KeyError("sync boom")

    b = AsyncBatcher(fn, max_batch_size=2, max_queue_time=0.001)
    with caplog.at_level(logging.ERROR, logger="ferrobatch"):
        outs = await asyncio.gather(*(b.process(i) for i in range(2)), return_exceptions=True)
    assert all(isinstance(o, KeyError) for o in outs)
    (record,) = [r for r in caplog.records if "items failed" in r.getMessage()]
    assert (record.batch_size, record.error_type) == (2, "KeyError")
    await b.stop()


async def test_wrong_result_count_fails_the_batch_with_a_value_error() -> None:
    async def fn(xs: list[int]) -> list[int]:
        return xs[:-1]

    b = AsyncBatcher(fn, max_batch_size=3)
    outs = await asyncio.gather(*(b.process(i) for i in range(3)), return_exceptions=True)
    for o in outs:
        assert isinstance(o, BatchSizeMismatchError)
        assert isinstance(o, ValueError) and isinstance(o, FerrobatchError)
        assert (o.expected, o.got) == (3, 2)
    await b.stop()


async def test_non_sequence_result_is_a_typed_error() -> None:
    async def fn(xs: list[int]) -> Any:
        return 5

    b = AsyncBatcher(fn, max_batch_size=2)
    with pytest.raises(InvalidBatchResultError, match="got int"):
        await b.process(1)
    await b.stop()


async def test_tuples_and_other_iterables_are_accepted() -> None:
    async def fn(xs: list[int]) -> Any:
        return tuple(x + 1 for x in xs)

    b = AsyncBatcher(fn, max_batch_size=2)
    assert await b.process_many([1, 2, 3]) == [2, 3, 4]
    await b.stop()


async def test_process_many_fails_with_the_first_item_error() -> None:
    async def fn(xs: list[int]) -> list[Any]:
        return [KeyError(x) if x == 2 else x for x in xs]

    b = AsyncBatcher(fn, max_batch_size=8)
    with pytest.raises(KeyError):
        await b.process_many([1, 2, 3])
    assert await b.process_many([4, 5]) == [4, 5]
    await b.stop()


@pytest.mark.parametrize("bad", [0, 1, -2])
def test_max_batch_size_zero_and_one_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="max_batch_size") as info:
        Doubler(max_batch_size=bad)
    assert isinstance(info.value, ConfigError) and info.value.field == "max_batch_size"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"max_queue_time": -1.0}, "max_queue_time"),
        ({"item_timeout": 0.0}, "item_timeout"),
        ({"max_queue_size": -5}, "max_queue_size"),
        ({"on_full": "block"}, "on_full"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Doubler(**kw)


def test_a_batch_function_is_required() -> None:
    with pytest.raises(TypeError, match="batch function"):
        AsyncBatcher()
    with pytest.raises(TypeError, match="callable"):
        AsyncBatcher(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        Doubler(max_batch_sise=4)


def test_deprecated_async_batcher_keywords_warn() -> None:
    with pytest.warns(DeprecationWarning, match="batch_size"):
        b = Doubler(batch_size=8)
    assert b.max_batch_size == 8
    with pytest.warns(DeprecationWarning, match="sleep_time"):
        Doubler(sleep_time=0.1)


async def test_queue_full_rejects_with_the_async_batcher_alias() -> None:
    b = AsyncBatcher(Recorder(), max_batch_size=10, max_queue_time=5.0, max_queue_size=2)
    f1, f2 = b.process(1), b.process(2)
    with pytest.raises(QueueFullException) as info:
        b.process(3)
    assert QueueFullException is QueueFullError
    assert info.value.capacity == 2
    assert b.stats().rejected == 1
    await b.stop()
    assert (await f1, await f2) == (2, 4)


async def test_queue_full_wait_holds_items_until_room_frees() -> None:
    rec = Recorder(delay=0.02)
    b = AsyncBatcher(rec, max_batch_size=2, max_queue_size=2, on_full="wait", concurrency=1)
    futs = [b.process(i) for i in range(10)]
    st = b.stats()
    assert st.queue_depth <= 2 and st.waiting >= 6
    assert await asyncio.gather(*futs) == [2 * i for i in range(10)]
    assert all(len(x) <= 2 for x in rec.batches)
    await b.stop()


async def test_is_running_and_repr() -> None:
    b = Doubler()
    assert await b.is_running()
    assert "running" in repr(b)
    await b.stop()
    assert not await b.is_running()
    assert "stopped" in repr(b)


def test_every_exception_derives_from_the_base() -> None:
    names = [
        "ConfigError",
        "QueueFullError",
        "BatcherStoppedError",
        "ItemTimeoutError",
        "BatchSizeMismatchError",
        "InvalidBatchResultError",
        "WrongEventLoopError",
        "StopTimeoutError",
    ]
    for name in names:
        cls = getattr(ferrobatch, name)
        assert issubclass(cls, FerrobatchError), name
        assert cls.__module__ == "ferrobatch"
    assert issubclass(ferrobatch.BatcherStoppedError, RuntimeError)
    assert issubclass(ferrobatch.ItemTimeoutError, TimeoutError)
    if sys.version_info >= (3, 11):  # asyncio.TimeoutError is the builtin one since 3.11
        assert issubclass(ferrobatch.ItemTimeoutError, asyncio.TimeoutError)
    assert issubclass(ferrobatch.StopTimeoutError, TimeoutError)
    assert ferrobatch.AsyncBatchException is FerrobatchError


def test_every_native_exception_class_is_exported_and_in_the_tree() -> None:
    from ferrobatch import _native

    native = {
        name
        for name, obj in vars(_native).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    exported = {
        name
        for name in ferrobatch.__all__
        if isinstance(getattr(ferrobatch, name), type)
        and issubclass(getattr(ferrobatch, name), BaseException)
        and name not in ("AsyncBatchException", "QueueFullException")  # async-batcher aliases
    }
    assert native == exported
    for name in native:
        assert issubclass(getattr(_native, name), FerrobatchError), name
    assert issubclass(ferrobatch.APITimeoutError, ferrobatch.APIConnectionError)
    assert issubclass(ferrobatch.ResponseTooLargeError, ferrobatch.ResponseFormatError)
    assert issubclass(ferrobatch.RateLimitError, ferrobatch.APIStatusError)
    assert issubclass(ferrobatch.JobNotFoundError, LookupError)


def test_version_matches_the_installed_wheel() -> None:
    assert ferrobatch.__version__ == importlib.metadata.version("ferrobatch")


def test_public_names_are_exported() -> None:
    for name in ferrobatch.__all__:
        assert hasattr(ferrobatch, name), name


async def test_stats_report_counts_and_latencies() -> None:
    b = Doubler(max_batch_size=4, max_queue_time=0.001)
    await asyncio.gather(*(b.process(i) for i in range(10)))
    s = b.stats()
    assert (s.submitted, s.completed, s.failed) == (10, 10, 0)
    assert s.batches == sum(s.batch_sizes.values())
    assert sum(k * v for k, v in s.batch_sizes.items()) == 10
    assert max(s.batch_sizes) <= 4
    assert s.queue_wait.count == 10 and 0 <= s.queue_wait.p50 <= s.queue_wait.p99
    assert s.batch_duration.count == s.batches
    assert (s.queue_depth, s.running_batches) == (0, 0)
    assert "submitted=10" in repr(s)
    await b.stop()


async def test_a_plain_callable_returning_a_coroutine_is_awaited() -> None:
    async def double(xs: list[int]) -> list[int]:
        return [x * 2 for x in xs]

    b = AsyncBatcher(lambda xs: double(xs), max_batch_size=4)
    assert await b.process_many([1, 2, 3]) == [2, 4, 6]
    await b.stop()
