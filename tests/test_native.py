"""Native dispatch: an HTTP batcher's batches run on the runtime with no Python task. Every
promise of `AsyncBatcher` holds there too: exactly one ending per accepted item under faults,
cancellation and stops; callers on threads with no event loop; a dropped batcher freed at once."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrobatch import (
    APIError,
    BatcherStoppedError,
    ItemTimeoutError,
    QueueFullError,
)
from ferrobatch.openai import ChatCompletions, Embeddings
from ferrobatch.testing import REJECT_MARKER, FakeServer, fake_embedding


def timer_threads() -> int:
    """Threads of this process named like the engine's timer thread."""
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("ferrobatch-tim"):
                n += 1
        except OSError:
            pass
    return n


def test_http_batchers_dispatch_natively(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k")
    chat = ChatCompletions("m", base_url=fake_ai_server.openai_base_url, api_key="k")
    assert emb._native_batch_fn() is not None and chat._native_batch_fn() is not None
    assert emb._core.threaded and chat._core.threaded  # batches run off the event loop
    emb.stop_sync()
    chat.stop_sync()


def test_a_subclass_overriding_process_batch_runs_in_python(fake_ai_server: FakeServer) -> None:
    seen: list[list[str]] = []

    class Logged(Embeddings):
        async def process_batch(self, batch: list[str]) -> list[Any]:
            seen.append(batch)
            return await super().process_batch(batch)

    async def main() -> list[Any]:
        emb = Logged(base_url=fake_ai_server.openai_base_url, api_key="k", max_queue_time=0.01)
        try:
            return await emb.embed_many(["a", "b"])
        finally:
            await emb.stop()

    vectors = asyncio.run(main())
    assert seen == [["a", "b"]]
    assert vectors[0] == pytest.approx(fake_embedding("a", 1536), abs=1e-6)


def test_callers_on_threads_need_no_event_loop(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", max_batch_size=8)
    texts = [f"t{i}" for i in range(40)]
    out: dict[str, Any] = {}

    def call(t: str) -> None:
        out[t] = emb.process_sync(t, timeout=30)

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    futures = [emb.submit(f"s{i}") for i in range(5)]
    for th in threads:
        th.join()
    for t in texts:
        assert out[t] == pytest.approx(fake_embedding(t, 1536), abs=1e-6)
    for i, f in enumerate(futures):
        assert f.result(timeout=30) == pytest.approx(fake_embedding(f"s{i}", 1536), abs=1e-6)
    assert emb._core.event_loop is None  # no loop was ever involved
    emb.stop_sync()
    s = emb.stats()
    assert s.completed == 45 and s.batches < 45


async def test_cancelling_every_caller_drops_the_request(fake_ai_server: FakeServer) -> None:
    chat = ChatCompletions("m", base_url=fake_ai_server.openai_base_url, api_key="k", timeout=600)
    fake_ai_server.fault("hang", duration=600)
    fut = chat.create(messages=[{"role": "user", "content": "hi"}])
    await asyncio.sleep(0.2)  # sent; the server holds the answer
    assert chat.stats().running_batches == 1
    fut.cancel()
    started = time.monotonic()
    await asyncio.wait_for(chat.stop(), 5)  # nothing left to wait for
    assert time.monotonic() - started < 5
    s = chat.stats()
    assert s.running_batches == 0 and s.cancelled == 1


async def test_force_stop_fails_running_native_batches(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", timeout=600)
    fake_ai_server.fault("hang", duration=600)
    futs = [emb.embed(t) for t in ("a", "b")]
    await asyncio.sleep(0.2)
    await asyncio.wait_for(emb.stop(force=True), 5)
    for f in futs:
        with pytest.raises(BatcherStoppedError):
            await f


async def test_one_bad_text_fails_alone(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", max_queue_time=0.01)
    results = await asyncio.gather(
        *(emb.embed(t) for t in ["ok", f"bad {REJECT_MARKER}", "fine"]), return_exceptions=True
    )
    assert isinstance(results[1], APIError)
    assert results[0] == pytest.approx(fake_embedding("ok", 1536), abs=1e-6)
    assert results[2] == pytest.approx(fake_embedding("fine", 1536), abs=1e-6)
    await emb.stop()


def test_a_dropped_http_batcher_is_freed_at_once(fake_ai_server: FakeServer) -> None:
    before = timer_threads()
    gc.disable()
    try:
        refs = []
        for _ in range(30):
            emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k")
            emb.process_sync("x", timeout=30)
            emb.stop_sync()
            refs.append(weakref.ref(emb))
            del emb
        assert all(r() is None for r in refs), "a stopped Embeddings outlived its last reference"
    finally:
        gc.enable()
    deadline = time.monotonic() + 5
    while timer_threads() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert timer_threads() <= before


# --- the exactly-once property, natively ------------------------------------------------------


@dataclass
class Plan:
    max_batch_size: int
    concurrency: int
    max_queue_time: float | str
    max_queue_size: int
    item_timeout: float | None
    gaps: list[float]
    rejected: set[int]  # texts the server refuses (that item alone fails)
    server_errors: int  # the next requests get a 500 (no retries: their batches fail)
    latency: float
    cancel_before: set[int]
    cancel_later: set[int]
    thread_callers: int  # items sent from a plain thread with process_sync
    stop: str


plans = st.builds(
    Plan,
    max_batch_size=st.integers(2, 6),
    concurrency=st.sampled_from([1, 2, -1]),
    max_queue_time=st.sampled_from([0.0, 0.001, 0.003, "auto"]),
    max_queue_size=st.sampled_from([-1, -1, 5, 20]),
    item_timeout=st.sampled_from([None, None, 0.004, 0.05]),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.0005, 0.002]), min_size=1, max_size=30),
    rejected=st.sets(st.integers(0, 29), max_size=4),
    server_errors=st.integers(0, 2),
    latency=st.sampled_from([0.0, 0.0, 0.002]),
    cancel_before=st.sets(st.integers(0, 29), max_size=4),
    cancel_later=st.sets(st.integers(0, 29), max_size=4),
    thread_callers=st.integers(0, 4),
    stop=st.sampled_from(["drain", "drain", "force", "force_midway", "timeout"]),
)

_SERVER: list[FakeServer] = []


def server() -> FakeServer:
    if not _SERVER:
        _SERVER.append(FakeServer())
    return _SERVER[0]


def text_of(i: int, plan: Plan) -> str:
    return f"{REJECT_MARKER} {i}" if i in plan.rejected else f"text {i}"


async def run(plan: Plan) -> None:
    srv = server()
    srv.clear_faults()
    srv.clear_requests()
    srv.latency = plan.latency
    if plan.server_errors:
        srv.fault("status", status=500, times=plan.server_errors)
    emb = Embeddings(
        base_url=srv.openai_base_url,
        api_key="k",
        dimensions=8,
        max_retries=0,
        max_batch_size=plan.max_batch_size,
        concurrency=plan.concurrency,
        max_queue_time=plan.max_queue_time,
        max_queue_size=plan.max_queue_size,
        item_timeout=plan.item_timeout,
    )
    accepted: dict[int, Any] = {}
    later = []
    thread_results: dict[int, Any] = {}

    def from_thread(k: int) -> None:
        i = 1000 + k
        try:
            thread_results[i] = emb.process_sync(f"text {i}", timeout=30)
        except (QueueFullError, BatcherStoppedError):
            thread_results[i] = "refused"
        except Exception as e:
            thread_results[i] = e

    threads = [threading.Thread(target=from_thread, args=(k,)) for k in range(plan.thread_callers)]
    for th in threads:
        th.start()
    for i, gap in enumerate(plan.gaps):
        if gap:
            await asyncio.sleep(gap)
        if plan.stop == "force_midway" and i == len(plan.gaps) // 2:
            await emb.stop(force=True)
        try:
            fut = emb.embed(text_of(i, plan))
        except (QueueFullError, BatcherStoppedError):
            continue
        accepted[i] = fut
        if i in plan.cancel_before:
            fut.cancel()
        if i in plan.cancel_later:
            later.append(fut)
    await asyncio.sleep(0.001)
    for fut in later:
        fut.cancel()
    await asyncio.to_thread(lambda: [th.join() for th in threads])
    if plan.stop == "force":
        await emb.stop(force=True)
    elif plan.stop == "timeout":
        try:
            await emb.stop(timeout=0.002)
        except TimeoutError:
            pass
    else:
        await emb.stop()

    # A request the server refused for one rejected text is sent again without it (so that
    # one bad text never fails its neighbours): only requests with no rejected text count as
    # sending a text for good.
    sent: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    for r in srv.requests("/embeddings"):
        texts = r["body"]["input"]
        tried.update(texts)
        if not any(REJECT_MARKER in t for t in texts):
            sent.update(texts)
    for i, fut in accepted.items():
        assert fut.done(), f"item {i} never ended"
        if fut.cancelled():
            continue
        exc = fut.exception()
        if exc is None:
            assert fut.result() == pytest.approx(fake_embedding(text_of(i, plan), 8), abs=1e-6)
            assert sent[text_of(i, plan)] == 1
        else:
            assert isinstance(exc, (APIError, BatcherStoppedError, ItemTimeoutError)), repr(exc)
            if isinstance(exc, ItemTimeoutError):
                assert tried[text_of(i, plan)] == 0, "a timed-out item was sent"
    for i, res in thread_results.items():
        if not isinstance(res, (str, BaseException)):
            assert res == pytest.approx(fake_embedding(f"text {i}", 8), abs=1e-6)
    assert len(thread_results) == plan.thread_callers
    # Nothing was sent twice (no retries here), nothing unknown was sent.
    assert all(n == 1 for n in sent.values()), sent
    known = {text_of(i, plan) for i in accepted} | {f"text {i}" for i in thread_results}
    assert set(tried) <= known
    for i in plan.cancel_before:
        if i in accepted:
            assert tried[text_of(i, plan)] == 0
    s = emb.stats()
    assert s.submitted == s.completed + s.failed + s.cancelled + s.timed_out, s
    assert s.queue_depth == 0 and s.running_batches == 0


@settings(
    max_examples=int(os.environ.get("FERROBATCH_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans)
def test_every_accepted_item_ends_exactly_once_natively(plan: Plan) -> None:
    asyncio.run(asyncio.wait_for(run(plan), 60))


def test_thread_callers_after_the_home_loop_closed(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", max_batch_size=2)

    async def first() -> Any:
        return await emb.embed("on the loop")

    asyncio.run(first())  # binds the batcher's home loop, then closes it
    # The same thread, no loop running now: batches made due here still run.
    assert emb.process_many_sync(["a", "b"], timeout=30)[1] == pytest.approx(
        fake_embedding("b", 1536), abs=1e-6
    )
    emb.stop_sync()


async def test_vector_lists_are_not_walked_by_the_cyclic_gc(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", dimensions=8)
    vec = await emb.embed("hello")
    assert isinstance(vec, list) and not gc.is_tracked(vec)
    assert vec == pytest.approx(fake_embedding("hello", 8), abs=1e-6)
    await emb.stop()
