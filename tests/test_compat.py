"""The drop-in matrix: what `process()` returns works with every asyncio API a user of
`async-batcher` (whose `process()` is a coroutine) or of plain asyncio Futures reaches for,
on the default loop and on uvloop, for batchers whose batches run on the loop (async batch
function) and on Rust threads (sync batch function)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ferrobatch import AsyncBatcher, ItemFuture


async def double_async(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


def double_sync(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


KINDS = {"async fn": double_async, "sync fn": double_sync}


def loop_factories() -> list[Any]:
    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the test extra off Windows
        out.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("uvloop missing")))
    else:
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return out


@pytest.fixture(params=list(KINDS))
def make(request: pytest.FixtureRequest) -> Callable[..., AsyncBatcher[int, int]]:
    fn = KINDS[request.param]
    return lambda **kw: AsyncBatcher(fn, max_batch_size=kw.pop("max_batch_size", 8), **kw)


@pytest.fixture(params=loop_factories())
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = request.param

    def run(main: Coroutine[Any, Any, Any]) -> Any:
        loop = factory()
        try:
            return loop.run_until_complete(main)
        finally:
            loop.close()

    return run


# Each case gets a fresh batcher and returns what it checked; the batcher is stopped after.
async def case_await(b: AsyncBatcher[int, int]) -> None:
    assert await b.process(1) == 2


async def case_gather(b: AsyncBatcher[int, int]) -> None:
    assert await asyncio.gather(*(b.process(i) for i in range(20))) == [2 * i for i in range(20)]


async def case_create_task(b: AsyncBatcher[int, int]) -> None:
    task = asyncio.create_task(b.process(3))
    assert isinstance(task, asyncio.Task)
    assert await task == 6


async def case_loop_create_task(b: AsyncBatcher[int, int]) -> None:
    assert await asyncio.get_running_loop().create_task(b.process(3)) == 6


async def case_ensure_future(b: AsyncBatcher[int, int]) -> None:
    fut = b.process(4)
    got = asyncio.ensure_future(fut)
    if sys.version_info >= (3, 10):
        assert got is fut  # 3.9 looks for a coroutine first and wraps it in a Task
    assert await got == 8


async def case_wait_for(b: AsyncBatcher[int, int]) -> None:
    assert await asyncio.wait_for(b.process(5), 5) == 10


async def case_wait_for_times_out_and_withdraws(b: AsyncBatcher[int, int]) -> None:
    slow = AsyncBatcher(double_async, max_batch_size=8, max_queue_time=10)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow.process(1), 0.01)
    await slow.stop()
    assert slow.stats().cancelled == 1 and slow.stats().completed == 0


async def case_shield(b: AsyncBatcher[int, int]) -> None:
    assert await asyncio.shield(b.process(6)) == 12


async def case_as_completed(b: AsyncBatcher[int, int]) -> None:
    got = sorted([await f for f in asyncio.as_completed([b.process(i) for i in range(5)])])
    assert got == [0, 2, 4, 6, 8]


async def case_add_done_callback_in_context(b: AsyncBatcher[int, int]) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[int, str]] = []
    fut = b.process(7)
    var.set("caller")  # copied into the callback's context at registration
    fut.add_done_callback(lambda f: seen.append((f.result(), var.get())))
    ctx = contextvars.copy_context()
    ctx.run(var.set, "explicit")
    fut.add_done_callback(lambda f: seen.append((f.result(), var.get())), context=ctx)
    assert await fut == 14
    await asyncio.sleep(0)
    assert seen == [(14, "caller"), (14, "explicit")]
    assert fut.remove_done_callback(print) == 0


async def case_contextvars_survive_await(b: AsyncBatcher[int, int]) -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("n")

    async def one(i: int) -> tuple[int, int]:
        var.set(i)
        r = await b.process(i)
        return r, var.get()

    assert await asyncio.gather(*(one(i) for i in range(10))) == [(2 * i, i) for i in range(10)]


async def case_cancel_withdraws_the_item(b: AsyncBatcher[int, int]) -> None:
    slow = AsyncBatcher(double_sync, max_batch_size=8, max_queue_time=0.05)
    futs = [slow.process(i) for i in range(4)]
    assert futs[1].cancel() and futs[1].cancelled()
    res = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(res[1], asyncio.CancelledError) and res[0] == 0 and res[3] == 6
    await slow.stop()
    assert slow.stats().cancelled == 1


async def case_cancel_a_task_around_it(b: AsyncBatcher[int, int]) -> None:
    slow = AsyncBatcher(double_async, max_batch_size=8, max_queue_time=0.05)
    task = asyncio.create_task(slow.process(1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    early = asyncio.create_task(slow.process(2))
    early.cancel()  # before its first step: thrown into the ItemFuture
    with pytest.raises(asyncio.CancelledError):
        await early
    await slow.stop()
    assert slow.stats().completed == 0


async def case_exception_raises_everywhere(b: AsyncBatcher[int, int]) -> None:
    def bad(xs: list[int]) -> list[Any]:
        return [ValueError(x) if x == 1 else x for x in xs]

    e = AsyncBatcher(bad, max_batch_size=4)
    with pytest.raises(ValueError):
        await e.process(1)
    with pytest.raises(ValueError):
        await asyncio.create_task(e.process(1))
    fut = e.process(1)
    await asyncio.gather(fut, return_exceptions=True)
    assert isinstance(fut.exception(), ValueError)
    await e.stop()


async def case_run_coroutine_threadsafe(b: AsyncBatcher[int, int]) -> None:
    loop = asyncio.get_running_loop()
    out: list[int] = []

    def from_thread() -> None:
        out.append(asyncio.run_coroutine_threadsafe(b.process(9), loop).result(5))

    t = threading.Thread(target=from_thread)
    t.start()
    while t.is_alive():
        await asyncio.sleep(0.005)
    assert out == [18]


async def case_task_group(b: AsyncBatcher[int, int]) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("TaskGroup is new in Python 3.11")
    async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined,unused-ignore]
        tasks = [tg.create_task(b.process(i)) for i in range(5)]
    assert [t.result() for t in tasks] == [0, 2, 4, 6, 8]


async def case_asyncio_wait_needs_tasks(b: AsyncBatcher[int, int]) -> None:
    # asyncio.wait refuses coroutines (3.11+; 3.8-3.10 warn), and an ItemFuture is one: wrap
    # it in a task.
    if sys.version_info >= (3, 11):
        with pytest.raises(TypeError, match="coroutines is forbidden"):
            await asyncio.wait([b.process(1)])
    done, _ = await asyncio.wait([asyncio.create_task(b.process(1))])
    assert [t.result() for t in done] == [2]


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", list(CASES))
def test_matrix(
    case: str,
    make: Callable[..., AsyncBatcher[int, int]],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
) -> None:
    async def main() -> None:
        b = make()
        try:
            await CASES[case](b)
        finally:
            await b.stop()

    run(main())


def test_asyncio_run_takes_process_directly(make: Callable[..., AsyncBatcher[int, int]]) -> None:
    b = make()
    assert asyncio.run(b.process(3)) == 6  # type: ignore[arg-type]
    if b._core.threaded:  # a sync batch function serves a second loop too
        assert asyncio.run(b.process(4)) == 8  # type: ignore[arg-type]


def test_futures_made_before_the_loop_are_queued_when_awaited(
    make: Callable[..., AsyncBatcher[int, int]],
) -> None:
    b = make()
    early = [b.process(i) for i in range(3)]
    many = b.process_many([10, 11])

    async def main() -> list[Any]:
        return await asyncio.gather(*early, many)

    assert asyncio.run(main()) == [0, 2, 4, [20, 22]]


def test_it_is_a_future_and_a_coroutine_to_asyncio(
    make: Callable[..., AsyncBatcher[int, int]],
) -> None:
    async def main() -> None:
        b = make()
        fut = b.process(1)
        assert isinstance(fut, ItemFuture)
        assert asyncio.isfuture(fut) and asyncio.iscoroutine(fut)
        assert isinstance(fut, Coroutine)
        assert fut.get_loop() is asyncio.get_running_loop()
        assert "pending" in repr(fut)
        with pytest.raises(asyncio.InvalidStateError):
            fut.result()
        assert await fut == 2
        assert fut.done() and not fut.cancelled() and fut.exception() is None
        assert "result=2" in repr(fut)
        assert not fut.cancel()
        await b.stop()

    asyncio.run(main())
