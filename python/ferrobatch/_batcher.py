"""`AsyncBatcher` and the `batch` decorator: the Python half of the batcher.

The native `Core` queues items and forms batches. An async batch function (or a sync one with
an `executor`) runs here, on the event loop, and its outcome goes back to `Core` once per
batch; a plain sync batch function runs on Rust-owned threads and never passes through here.
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import functools
import inspect
import logging
import warnings
import weakref
from collections.abc import Awaitable, Hashable, Iterable, Sequence
from concurrent.futures import Executor
from typing import (
    Any,
    Callable,
    Generic,
    Literal,
    Optional,
    TypeVar,
    Union,
    overload,
)

from ferrobatch._native import Batch, BatcherStats, Core, ItemFuture, StopTimeoutError, _NativeFn

__all__ = ["AsyncBatcher", "BatchedFunction", "ItemFuture", "batch"]

# `asyncio.create_task`, `TaskGroup.create_task` and `asyncio.run` take coroutines only; an
# ItemFuture speaks the coroutine protocol too.
collections.abc.Coroutine.register(ItemFuture)

T = TypeVar("T")
S = TypeVar("S")

logger = logging.getLogger("ferrobatch")

BatchResult = Optional[Sequence[Union[S, BaseException]]]
BatchFn = Callable[[list[T]], Union[Awaitable[BatchResult[S]], BatchResult[S]]]

_DEPRECATED_NO_EFFECT = ("sleep_time", "buffering_time")


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class AsyncBatcher(Generic[T, S]):
    """Batch items for a batch function; `await batcher.process(item)` gives the item's result.

    Subclass it and override `process_batch`, or pass the batch function as the first argument.
    The keywords and their defaults are those of the `async-batcher` package:

    - `max_batch_size`: most items per batch; -1 for no limit (0 and 1 are rejected).
    - `max_queue_time`: seconds a partial batch waits after its first item arrived, or
      "auto": dispatch at once while a concurrency slot is free, accumulate while all are busy.
    - `concurrency`: most batches running at once; -1 for no limit.
    - `max_queue_size`: most items queued; -1 (or 0) for no limit.
    - `executor`: where a synchronous batch function runs. None (the default): on threads the
      batcher owns, with no event loop involved, so callers on plain threads
      (`process_sync`, `submit`) and on any event loop share its batches.
    - `on_full`: "reject" raises `QueueFullError` when the queue is full; "wait" accepts the
      item, which waits for room before it can join a batch.
    - `item_timeout`: seconds an item may wait to be dispatched before it fails with
      `ItemTimeoutError`; None for no limit.
    - `max_latency`: with "auto", a bound (seconds) on queue wait plus estimated batch
      duration; "auto" then waits for more items only when that pays off within the bound.
    - `aging`: seconds after which a waiting item goes ahead of fresher items whatever their
      priority (None: no aging; starvation is then bounded only by `item_timeout`).
    - `dedupe`: True (items must be hashable) or a key function: an item whose key equals one
      already waiting or running joins it instead of taking a slot of its own. The batch
      function sees the key once, and every caller gets its result (the same object) or its
      exception; `stats().deduplicated` counts the calls that joined. False by default.
    """

    # Whether max_batch_size=1 is accepted (async-batcher rejects it; subclasses that send one
    # request per item accept it).
    _single_item_batches = False

    def __init__(
        self,
        fn: BatchFn[T, S] | None = None,
        /,
        *,
        max_batch_size: int = -1,
        max_queue_time: float | Literal["auto"] = 0.01,
        concurrency: int = 1,
        max_queue_size: int = -1,
        executor: Executor | None = None,
        on_full: Literal["reject", "wait"] = "reject",
        item_timeout: float | None = None,
        max_latency: float | None = None,
        aging: float | None = 1.0,
        dedupe: bool | Callable[[T], Hashable] = False,
        **deprecated: Any,
    ) -> None:
        for name in _DEPRECATED_NO_EFFECT:
            if deprecated.pop(name, None) is not None:
                warnings.warn(f"{name!r} has no effect", DeprecationWarning, stacklevel=2)
        if "batch_size" in deprecated:
            warnings.warn(
                "'batch_size' is deprecated; use 'max_batch_size'", DeprecationWarning, stacklevel=2
            )
            max_batch_size = deprecated.pop("batch_size")
        if deprecated:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        native = self._native_batch_fn() if fn is None else None
        # The batch function given, or None for this batcher's own `process_batch` (looked up
        # when a batch runs, so the batcher holds no reference to itself and is freed as soon
        # as it is dropped).
        self._fn: BatchFn[T, S] | None = fn
        if fn is None:
            if type(self).process_batch is AsyncBatcher.process_batch:
                raise TypeError(
                    "AsyncBatcher needs a batch function: pass one, or subclass and override "
                    "process_batch"
                )
            fn = self.process_batch
        elif not callable(fn):
            raise TypeError(f"the batch function must be callable, got {type(fn).__name__}")
        self._is_async = _is_async(fn)
        # A plain function with no executor runs on Rust-owned threads (GIL taken once per
        # batch). A bound method of this batcher is held weakly, so the batcher can be freed.
        threaded = native is None and not self._is_async and executor is None
        weak = threaded and getattr(fn, "__self__", None) is self
        sync_fn: Any = (weakref.WeakMethod(fn) if weak else fn) if threaded else None
        self.max_batch_size = max_batch_size
        self.max_queue_time = max_queue_time
        self.concurrency = concurrency
        self.max_queue_size = max_queue_size
        self.executor = executor
        self._core = Core(
            start=weakref.WeakMethod(self._start),
            max_batch_size=max_batch_size,
            max_queue_time=max_queue_time,
            concurrency=concurrency,
            max_queue_size=max_queue_size,
            on_full=on_full,
            item_timeout=item_timeout,
            max_latency=max_latency,
            aging=aging,
            single_item_batches=self._single_item_batches,
            sync_fn=sync_fn,
            sync_fn_weak=weak,
            finish=weakref.WeakMethod(self._finish),
            native=native,
            dedupe=dedupe,
            dedupe_copy=self._dedupe_copy,
        )
        # Running batches: force-stop aborts and cancels them.
        self._running: dict[Batch, asyncio.Future[Any]] = {}
        self._forced = False
        if type(self).process is AsyncBatcher.process:
            # The hot path: calls go straight to the native method, with no Python frame.
            self.process = self._core.process  # type: ignore[method-assign]

    async def process_batch(self, batch: list[T]) -> BatchResult[S]:
        """Process one batch; override in a subclass (async def, or a plain def that runs in
        the executor). Return one result per item, in order, or None; an Exception instance in
        a slot is raised to that item's caller alone."""
        raise TypeError("process_batch is not overridden")  # pragma: no cover

    # Makes each later caller of a deduplicated item its own copy of the shared result; None:
    # they share the one object (the HTTP embeddings batchers copy their vectors).
    _dedupe_copy: Callable[[Any], Any] | None = None

    def _native_batch_fn(self) -> _NativeFn | None:
        """A batch function written in Rust that replaces `process_batch` (the HTTP batchers'):
        its batches run on the runtime with no Python task. None: batches run in Python."""
        return None

    # --- submitting -----------------------------------------------------------------------

    def process(self, item: T, priority: int = 0) -> ItemFuture[S]:
        """Queue `item` and return an `ItemFuture` of its result.

        Await it, gather it, or hand it to `create_task`, `TaskGroup.create_task`,
        `asyncio.run`, `wait_for`, `shield` or `as_completed`: it is both an asyncio Future
        and a coroutine. Called with no loop running, the item is queued when a loop first
        awaits it. Higher `priority` items enter the next batch first; equal priorities keep
        arrival order. Raises `QueueFullError` if the queue is full (on_full="reject"),
        `BatcherStoppedError` after `stop()`, `WrongEventLoopError` (async batch functions
        only) from a loop other than the batcher's.
        """
        fut: ItemFuture[S] = self._core.process(item, priority)
        return fut

    def process_many(self, items: Iterable[T], priority: int = 0) -> ItemFuture[list[S]]:
        """Queue every item and return one `ItemFuture` of the list of their results, in order.

        It fails with the first item error, like `asyncio.gather`; cancelling it drops the
        items not yet dispatched.
        """
        fut: ItemFuture[list[S]] = self._core.process_many(items, priority)
        return fut

    # --- callers on threads ---------------------------------------------------------------

    def process_sync(self, item: T, priority: int = 0, timeout: float | None = None) -> S:
        """From a plain thread: queue `item` and block (GIL released) until its result.

        Raises the item's exception; `TimeoutError` if `timeout` seconds pass first (the item
        is withdrawn if its batch has not started). A sync batch function needs no event loop;
        an async one runs on the loop the batcher was first used from, which must be running
        in another thread. Calling it from a coroutine raises `WrongEventLoopError`: await
        `process` there.
        """
        result: S = self._core.process_sync(item, priority, timeout)
        return result

    def process_many_sync(
        self, items: Iterable[T], priority: int = 0, timeout: float | None = None
    ) -> list[S]:
        """From a plain thread: queue every item and block until the list of their results,
        in order. Fails with the first item error."""
        results: list[S] = self._core.process_many_sync(items, priority, timeout)
        return results

    def submit(self, item: T, priority: int = 0) -> concurrent.futures.Future[S]:
        """From any thread: queue `item` and return a `concurrent.futures.Future` of its
        result. Cancelling it before its batch starts withdraws the item."""
        fut: concurrent.futures.Future[S] = self._core.submit(item, priority)
        return fut

    # --- running batches (called by the native core, on the event loop) --------------------

    def _start(self, batch: Batch, awaitable: Awaitable[BatchResult[S]] | None = None) -> None:
        if self._forced:
            # Formed before a forced stop and delivered after it: its items end stopped too.
            batch.abort()
            return
        loop = self._core.event_loop or asyncio.get_running_loop()  # may not run yet
        task = loop.create_task(self._run(batch, awaitable))
        self._running[batch] = task
        task.add_done_callback(functools.partial(self._forget, batch))

    def _forget(self, batch: Batch, _: object) -> None:
        self._running.pop(batch, None)

    def _finish(self, batch: Batch, awaitable: Awaitable[BatchResult[S]]) -> None:
        # A plain batch function running on a thread returned an awaitable (a lambda around an
        # async function): it is awaited here, on the loop.
        self._start(batch, awaitable)

    async def _run(self, batch: Batch, awaitable: Awaitable[BatchResult[S]] | None) -> None:
        # Items are taken when the batch really starts, so a caller who cancels before then
        # keeps its item out of the batch function.
        items = batch.items()
        if not items:
            batch.resolve([])  # every caller cancelled: the batch function is not called
            return
        try:
            if awaitable is not None:
                result = await awaitable
            elif self._is_async:
                result = await self._batch_fn()(items)  # type: ignore[misc]
            else:
                loop = asyncio.get_running_loop()
                fn: Callable[[list[T]], Any] = self._batch_fn()
                result = await loop.run_in_executor(self.executor, fn, items)
                if inspect.isawaitable(result):  # e.g. a lambda that returns a coroutine
                    result = await result
        except asyncio.CancelledError:
            batch.abort()
            raise
        except BaseException as exc:
            self._log_failure(len(items), exc)
            batch.fail(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            batch.resolve(result)

    def _batch_fn(self) -> BatchFn[T, S]:
        return self.process_batch if self._fn is None else self._fn

    @staticmethod
    def _log_failure(n: int, exc: BaseException) -> None:
        logger.error(
            "batch of %d items failed: %r",
            n,
            exc,
            exc_info=exc,
            extra={"batch_size": n, "error_type": type(exc).__name__},
        )

    # --- lifecycle --------------------------------------------------------------------------

    async def stop(self, force: bool = False, timeout: float | None = None) -> None:
        """Stop accepting items and drain: every accepted item is processed first.

        `force=True` fails queued items with `BatcherStoppedError` and cancels running
        batches (their items get `BatcherStoppedError` too). `timeout` bounds the drain; when it
        runs out the rest is force-stopped and `StopTimeoutError` is raised.
        """
        if force:
            self._force_stop()
        else:
            self._core.close(False)
        waiter = self._core.drain_waiter()
        if timeout is None:
            await waiter
            return
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            self._force_stop()
            await waiter
            raise StopTimeoutError(
                f"the drain did not finish within {timeout}s; what was left was force-stopped"
            ) from None

    def stop_sync(self, force: bool = False, timeout: float | None = None) -> None:
        """`stop` for code with no event loop: stop accepting items and block until every
        accepted item has ended (see `stop`). Not from a coroutine: await `stop` there."""
        if force:
            self._force_stop()
        else:
            self._core.close(False)
        if not self._core.wait_drained(timeout):
            self._force_stop()
            self._core.wait_drained(None)
            raise StopTimeoutError(
                f"the drain did not finish within {timeout}s; what was left was force-stopped"
            )

    def _force_stop(self) -> None:
        self._forced = True
        self._core.close(True)
        for batch, task in list(self._running.items()):
            batch.abort()
            task.cancel()

    async def is_running(self) -> bool:
        """Whether the batcher accepts items (it has not been stopped)."""
        return self._core.accepting

    def stats(self) -> BatcherStats:
        """A snapshot of the batcher's counters and latency percentiles."""
        return self._core.stats()

    async def __aenter__(self) -> AsyncBatcher[T, S]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self._core.accepting else "stopped"
        return (
            f"<{type(self).__name__} {state} max_batch_size={self.max_batch_size} "
            f"max_queue_time={self.max_queue_time} concurrency={self.concurrency}>"
        )


class BatchedFunction(Generic[T, S]):
    """A batch function wrapped by `@batch`: call it with ONE item, await the result."""

    def __init__(self, fn: BatchFn[T, S], **options: Any) -> None:
        self.batcher: AsyncBatcher[T, S] = AsyncBatcher(fn, **options)
        functools.update_wrapper(self, fn)

    def __call__(self, item: T) -> ItemFuture[S]:
        return self.batcher.process(item)

    def many(self, items: Iterable[T]) -> ItemFuture[list[S]]:
        """Queue many items; one Future of their results in order."""
        return self.batcher.process_many(items)

    async def stop(self, force: bool = False, timeout: float | None = None) -> None:
        """Stop the underlying batcher (see `AsyncBatcher.stop`)."""
        await self.batcher.stop(force=force, timeout=timeout)

    def stats(self) -> BatcherStats:
        """The underlying batcher's stats."""
        return self.batcher.stats()


@overload
def batch(fn: BatchFn[T, S], /) -> BatchedFunction[T, S]: ...
@overload
def batch(
    fn: None = None,
    /,
    *,
    max_batch_size: int = ...,
    max_queue_time: float | Literal["auto"] = ...,
    concurrency: int = ...,
    max_queue_size: int = ...,
    executor: Executor | None = ...,
    on_full: Literal["reject", "wait"] = ...,
    item_timeout: float | None = ...,
    max_latency: float | None = ...,
    aging: float | None = ...,
    dedupe: bool | Callable[[Any], Hashable] = ...,
) -> Callable[[BatchFn[T, S]], BatchedFunction[T, S]]: ...
def batch(
    fn: BatchFn[T, S] | None = None, /, **options: Any
) -> BatchedFunction[T, S] | Callable[[BatchFn[T, S]], BatchedFunction[T, S]]:
    """Turn a function over a list of items into one that takes a single item.

    `@batch(max_batch_size=32)` over `async def embed(texts: list[str]) -> list[V]` gives
    `embed("one text")`, an awaitable of that text's result; calls are batched.
    """
    if fn is not None:
        return BatchedFunction(fn, **options)

    def wrap(f: BatchFn[T, S]) -> BatchedFunction[T, S]:
        return BatchedFunction(f, **options)

    return wrap
