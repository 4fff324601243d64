"""JobManager and JobStore against the shipped fake server and a real SQLite file."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ferrobatch
from ferrobatch.jobs import JobManager, JobRequest, JobStatus, JobStore
from ferrobatch.openai import ChatCompletions, Embeddings
from ferrobatch.testing import REJECT_MARKER, FakeServer, fake_embedding

HERE = Path(__file__).resolve().parent


def chat(server: FakeServer, **kw: object) -> ChatCompletions:
    opts: dict[str, object] = {
        "base_url": server.openai_base_url,
        "api_key": "k",
        "initial_backoff": 0.01,
        "concurrency": 8,
    }
    opts.update(kw)
    return ChatCompletions("fake-model", **opts)  # type: ignore[arg-type]


def reqs(n: int, prefix: str = "item") -> list[JobRequest]:
    return [
        JobRequest(id=f"r{i}", body={"messages": [{"role": "user", "content": f"{prefix} {i}"}]})
        for i in range(n)
    ]


def sends(server: FakeServer) -> collections.Counter[str]:
    """How many times each message content reached the server."""
    return collections.Counter(
        r["body"]["messages"][-1]["content"] for r in server.requests("/chat/completions")
    )


async def test_a_job_runs_to_completion_with_results_in_order(
    fake_ai_server: FakeServer, tmp_path: Path
) -> None:
    client = chat(fake_ai_server, prices={"fake-model": {"input": 1.0, "output": 2.0}})
    store = JobStore(tmp_path / "jobs.db")
    assert store.schema_version == 3 and store.engine == "sqlite"
    manager = JobManager(client, store)
    job = await manager.create_job(reqs(60), name="reviews")
    assert job.total == 60 and job.name == "reviews"
    assert job.status in (JobStatus.PENDING, JobStatus.PROCESSING)
    job = await manager.wait(job.id)
    assert job.status is JobStatus.COMPLETED
    results = await manager.get_results(job.id)
    assert [r.id for r in results] == [f"r{i}" for i in range(60)]
    for i, r in enumerate(results):
        assert r.ok and r.status == "succeeded"
        assert r.response is not None
        assert r.response["choices"][0]["message"]["content"] == f"fake reply to: item {i}"
    p = await manager.progress(job.id)
    assert (p.total, p.succeeded, p.failed, p.pending, p.done) == (60, 60, 0, 0, 60)
    assert p.input_tokens > 0 and p.output_tokens > 0
    assert p.cost == pytest.approx((p.input_tokens * 1.0 + p.output_tokens * 2.0) / 1e6)
    assert sends(fake_ai_server) == {f"item {i}": 1 for i in range(60)}
    assert [j.id for j in manager.list_jobs()] == [job.id]
    await manager.close()
    await client.stop()


async def test_bad_requests_are_refused_before_anything_is_written(
    fake_ai_server: FakeServer,
) -> None:
    client = chat(fake_ai_server)
    manager = JobManager(client)
    dup = [*reqs(3), JobRequest(id="r1", body={"messages": []})]
    with pytest.raises(ferrobatch.DuplicateRequestIdError) as info:
        await manager.create_job(dup)
    assert (info.value.id, info.value.index, info.value.first) == ("r1", 3, 1)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match='"x": `messages` must be a list'):
        await manager.create_job([JobRequest(id="x", body={"prompt": "hi"})])
    with pytest.raises(ferrobatch.InvalidInputError, match='"y": the body is not JSON'):
        await manager.create_job([JobRequest(id="y", body={"messages": [], "t": object()})])
    assert manager.list_jobs() == []
    with pytest.raises(ferrobatch.JobNotFoundError):
        await manager.get_status("nope")
    await client.stop()


async def test_cancel_never_sends_pending_requests() -> None:
    with FakeServer(latency=0.1) as server:
        client = chat(server, concurrency=2)
        manager = JobManager(client, window=2)
        job = await manager.create_job(reqs(40))
        await asyncio.sleep(0.25)
        cancelled = await manager.cancel(job.id)
        job = await manager.wait(job.id)
        assert job.status is JobStatus.CANCELLED
        p = await manager.progress(job.id)
        assert p.cancelled == cancelled > 0
        assert p.succeeded + p.cancelled == 40 and p.pending == 0 and p.running == 0
        await asyncio.sleep(0.3)
        assert server.request_count() == p.succeeded  # the cancelled ones never went out
        statuses = {r.status for r in await manager.get_results(job.id)}
        assert statuses == {"succeeded", "cancelled"}
        await client.stop()


async def test_per_request_failures_leave_the_job_completed_and_retry_failed(
    fake_ai_server: FakeServer,
) -> None:
    client = chat(fake_ai_server)
    manager = JobManager(client)
    fake_ai_server.fault("status", status=400, times=3)
    job = await manager.create_job(reqs(20))
    job = await manager.wait(job.id)
    assert job.status is JobStatus.COMPLETED
    results = await manager.get_results(job.id)
    failed = [r for r in results if not r.ok]
    assert len(failed) == 3
    assert all(
        r.error and r.error["type"] == "BadRequestError" and r.error["status"] == 400
        for r in failed
    )
    assert await manager.retry_failed(job.id) == 3
    job = await manager.wait(job.id)
    assert job.status is JobStatus.COMPLETED
    assert all(r.ok for r in await manager.get_results(job.id))
    assert fake_ai_server.request_count() == 23
    await client.stop()


async def test_a_rejected_request_fails_alone(fake_ai_server: FakeServer) -> None:
    client = chat(fake_ai_server)
    manager = JobManager(client)
    rs = reqs(5)
    rs[2] = JobRequest(id="bad", body={"messages": [{"role": "user", "content": REJECT_MARKER}]})
    job = await manager.wait((await manager.create_job(rs)).id)
    results = await manager.get_results(job.id)
    assert [r.ok for r in results] == [True, True, False, True, True]
    await client.stop()


async def test_authentication_failure_fails_the_job() -> None:
    with FakeServer(api_key="right") as server:
        client = chat(server, api_key="wrong-key-123")
        manager = JobManager(client, window=1)
        job = await manager.wait((await manager.create_job(reqs(10))).id)
        assert job.status is JobStatus.FAILED
        assert job.error is not None and "AuthenticationError" in job.error
        assert "wrong-key-123" not in job.error
        p = await manager.progress(job.id)
        assert p.failed >= 1 and p.pending >= 1  # stopped early: the rest was never sent
        assert server.request_count() == p.failed
        await client.stop()


async def test_an_unreachable_server_fails_the_job_after_patience() -> None:
    server = FakeServer()
    url = server.openai_base_url
    server.stop()
    await asyncio.sleep(0.05)
    client = ChatCompletions("m", base_url=url, api_key="k", max_retries=0)
    manager = JobManager(client, patience=0.0, window=1)
    job = await manager.wait((await manager.create_job(reqs(5))).id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "unreachable" in job.error
    await client.stop()


async def test_embeddings_jobs(fake_ai_server: FakeServer) -> None:
    emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", dimensions=4)
    manager = JobManager(emb)
    rs = [
        JobRequest(id="one", body={"input": "alpha"}),
        JobRequest(id="two", body={"input": ["beta", "gamma"]}),
    ]
    job = await manager.wait((await manager.create_job(rs)).id)
    results = await manager.get_results(job.id)
    assert results[1].response is not None
    data = results[1].response["data"]
    assert [d["index"] for d in data] == [0, 1]
    for d, text in zip(data, ["beta", "gamma"]):
        assert all(abs(a - b) < 1e-6 for a, b in zip(d["embedding"], fake_embedding(text, 4)))
    with pytest.raises(ValueError, match="`input` must be a string"):
        await manager.create_job([JobRequest(id="x", body={"input": []})])
    with pytest.raises(ValueError, match="`dimensions` 8 differs from the client's 4"):
        await manager.create_job([JobRequest(id="x", body={"input": "a", "dimensions": 8})])
    with pytest.raises(ValueError, match=r"unsupported embeddings field\(s\): foo"):
        await manager.create_job([JobRequest(id="x", body={"input": "a", "foo": 1})])
    await emb.stop()


async def test_two_managers_on_one_store_never_send_a_request_twice(tmp_path: Path) -> None:
    with FakeServer(latency=0.01) as server:
        path = tmp_path / "shared.db"
        a_client, b_client = chat(server, concurrency=4), chat(server, concurrency=4)
        a = JobManager(a_client, JobStore(path), window=4)
        b = JobManager(b_client, JobStore(path), window=4)
        job = await a.create_job(reqs(200))
        await b.resume()  # b works on the same job at the same time
        await asyncio.gather(a.wait(job.id), b.wait(job.id))
        assert (await a.get_status(job.id)) is JobStatus.COMPLETED
        counts = sends(server)
        assert counts == {f"item {i}": 1 for i in range(200)}
        results = await b.get_results(job.id)
        assert all(r.ok for r in results)
        await a_client.stop()
        await b_client.stop()


async def test_sigkill_mid_job_then_resume_sends_nothing_committed_twice(tmp_path: Path) -> None:
    n = 200
    with FakeServer(latency=0.05) as server:
        path = tmp_path / "crash.db"
        worker = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_job_worker.py"),
                str(path),
                server.openai_base_url,
                str(n),
                "1.0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout is not None
            job_id = worker.stdout.readline().strip()
            store = JobStore(path)
            deadline = time.monotonic() + 30
            while store.progress(job_id).succeeded < 40:
                assert time.monotonic() < deadline, "the worker made no progress"
                await asyncio.sleep(0.02)
            os.kill(worker.pid, signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
        # What the store says was committed at the moment of the kill.
        rows = store.results(job_id)
        committed = {r.id for r in rows if r.status == "succeeded"}
        in_flight = {r.id for r in rows if r.status == "running"}
        assert 40 <= len(committed) < n
        sent_before = sends(server)

        client = chat(server)
        manager = JobManager(client, store, lease_seconds=1.0)
        resumed = await manager.resume()
        assert [j.id for j in resumed] == [job_id]
        job = await manager.wait(job_id)
        assert job.status is JobStatus.COMPLETED
        results = await manager.get_results(job_id)
        assert len(results) == n and all(r.ok for r in results)
        counts = sends(server)
        for i in range(n):
            rid, content = f"r{i}", f"item {i}"
            if rid in committed:
                assert counts[content] == 1, f"{rid} was committed but sent {counts[content]}x"
            elif rid in in_flight:
                assert counts[content] in (1, 2)  # in flight at the kill: may be sent again
            else:
                assert counts[content] == 1
                assert sent_before[content] == 0
        await client.stop()
