"""Jobs on PostgreSQL (a throwaway server from the installed binaries) and workers on many
processes: the same store suite as SQLite, kill -9 of a worker, a database restart."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _helpers import chat_jsonl, cli
from ferrobatch._native import _store_suite
from ferrobatch.jobs import JobManager, JobRequest, JobStatus, JobStore
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer
from ferrobatch.testing.plugin import unavailable
from ferrobatch.testing.postgres import PostgresServer, PostgresUnavailable


def reqs(n: int) -> list[JobRequest]:
    return [
        JobRequest(id=f"r{i}", body={"messages": [{"role": "user", "content": f"item {i}"}]})
        for i in range(n)
    ]


def sends(server: FakeServer) -> collections.Counter[str]:
    return collections.Counter(
        r["body"]["messages"][-1]["content"] for r in server.requests("/chat/completions")
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_same_store_suite_passes_on_both_engines(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    location = (
        str(tmp_path / "suite.db")
        if engine == "sqlite"
        else request.getfixturevalue("postgres_dsn")
    )
    _store_suite(location)
    _store_suite(location)  # again, on a store holding the first run's data
    assert JobStore(location).engine == engine


def test_stores_of_the_old_version_numbering_are_read_right(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """PostgreSQL stores once counted 1 and 2 for what is now 2 and 3 (one sequence with
    SQLite's): the tables say which layout a store has, and it moves to today's number."""
    store = JobStore(postgres_dsn)
    store._native.create_job(
        "j", None, "/v1/chat/completions", None, None, [("a", {"messages": []})]
    )
    db = postgres_dsn.rsplit("/", 1)[1]

    def psql(sql: str) -> None:
        postgres_server._run(
            "psql", "-h", "127.0.0.1", "-p", str(postgres_server.port), "-U",
            postgres_server.user, "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip

    psql("DELETE FROM ferrobatch_schema; INSERT INTO ferrobatch_schema VALUES (1), (2)")
    again = JobStore(postgres_dsn)
    assert again.schema_version == 3 and again.job("j").total == 1
    psql(
        "DROP TABLE ferrobatch_chunks; ALTER TABLE ferrobatch_requests DROP COLUMN chunk;"
        "ALTER TABLE ferrobatch_jobs DROP COLUMN chunks;"
        "DELETE FROM ferrobatch_schema; INSERT INTO ferrobatch_schema VALUES (1)"
    )
    third = JobStore(postgres_dsn)
    assert third.schema_version == 3 and third.provider_batches("j") == []
    assert third.progress("j").pending == 1


async def test_a_job_on_postgres_with_results_in_order(postgres_dsn: str) -> None:
    store = JobStore(postgres_dsn)
    assert store.engine == "postgresql" and store.schema_version == 3
    with FakeServer() as server:
        chat = ChatCompletions(
            "m", base_url=server.openai_base_url, api_key="k", prices={"m": {"input": 1.0}}
        )
        async with JobManager(chat, store) as manager:
            job = await manager.wait((await manager.create_job(reqs(50), name="pg")).id)
            assert job.status is JobStatus.COMPLETED and job.name == "pg"
            results = await manager.get_results(job.id)
            assert [r.id for r in results] == [f"r{i}" for i in range(50)]
            assert all(r.ok for r in results)
            p = await manager.progress(job.id)
            assert (p.succeeded, p.pending, p.running) == (50, 0, 0)
            assert p.cost == pytest.approx(p.input_tokens / 1e6)
        assert sends(server) == {f"item {i}": 1 for i in range(50)}
        await chat.stop()


def test_a_password_never_shows(postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://nobody:s3cret-pw@127.0.0.1:{postgres_server.port}/nope"
    with pytest.raises(Exception) as info:
        JobStore(dsn)
    assert "s3cret-pw" not in str(info.value)
    store = JobStore(postgres_server.create_database().replace("ferrobatch@", "ferrobatch:pw@"))
    assert "pw@" not in repr(store) and "***" in repr(store)


def test_three_workers_one_killed_every_request_ends_once(
    postgres_dsn: str, tmp_path: Path
) -> None:
    n, concurrency = 600, 4
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    chat_jsonl(src, n)
    with FakeServer(latency=0.02) as server:
        sub = subprocess.run(
            cli("submit", str(src), "--store", postgres_dsn), capture_output=True, text=True
        )
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        args = ["--store", postgres_dsn, "--base-url", server.openai_base_url]
        args += ["--concurrency", str(concurrency), "--lease-seconds", "2", "--until-idle"]
        workers = [
            subprocess.Popen(cli("work", *args), env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        store = JobStore(postgres_dsn)
        try:
            assert workers[0].stderr is not None
            line = ""
            while " as runner_" not in line:
                line = workers[0].stderr.readline()
                assert line, "the first worker exited before it started the job"
            victim = line.rsplit(" as ", 1)[1].strip()
            deadline = time.monotonic() + 60
            while store.progress(job_id).done < n // 3:
                assert time.monotonic() < deadline, "the workers made no progress"
                time.sleep(0.02)
            workers[0].send_signal(signal.SIGKILL)
            assert workers[0].wait(timeout=10) == -signal.SIGKILL
            # What it held when it died: in flight, or answered and not yet recorded. Its
            # heartbeat lapses after two seconds; until then nobody takes these over.
            held = store.held_by(job_id).get(victim, 0)
            for w in workers[1:]:
                assert w.wait(timeout=120) == 0, w.stderr.read() if w.stderr else ""
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
                if w.stderr is not None:
                    w.stderr.close()
        assert store.job(job_id).status is JobStatus.COMPLETED
        p = store.progress(job_id)
        assert (p.succeeded, p.failed, p.pending, p.running) == (n, 0, 0, 0)
        results = store.results(job_id)
        assert [r.id for r in results] == [f"c{i}" for i in range(n)]
        counts = sends(server)
        assert set(counts) == {f"item {i}" for i in range(n)}
        resent = sum(counts.values()) - n
        # Sent twice: at most what the killed worker held, in flight or not yet recorded.
        assert 0 < held and resent <= held, (resent, held)
        print(f"kill -9: the worker held {held} requests; {resent} were sent again")
        assert (
            subprocess.run(
                cli("results", job_id, "--store", postgres_dsn, "-o", str(out))
            ).returncode
            == 0
        )
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == [f"c{i}" for i in range(n)]
        assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in lines)


async def test_postgres_restarted_mid_job_the_workers_reconnect_and_finish() -> None:
    try:
        pg = PostgresServer()
    except PostgresUnavailable as e:
        unavailable(e)
        raise
    n = 400
    with pg, FakeServer(latency=0.01) as server:
        store = JobStore(pg.create_database())
        chat = ChatCompletions("m", base_url=server.openai_base_url, api_key="k", concurrency=8)
        async with JobManager(chat, store, lease_seconds=5.0) as manager:
            job = await manager.create_job(reqs(n))
            while (await manager.progress(job.id)).done < n // 4:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(1.0)  # requests still finish; their outcomes wait
            await asyncio.to_thread(pg.start)
            job = await asyncio.wait_for(manager.wait(job.id), 60)
            assert job.status is JobStatus.COMPLETED
            results = await manager.get_results(job.id)
            assert len(results) == n and all(r.ok for r in results)
        assert set(sends(server)) == {f"item {i}" for i in range(n)}
        await chat.stop()
