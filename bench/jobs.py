"""Batch jobs against the online path: client CPU per request and throughput.

    python bench/jobs.py                       # 20,000 chat requests, SQLite and PostgreSQL
    python bench/jobs.py --sizes 20000,1000000 # and a job of a million requests
    python bench/jobs.py --quick               # a smoke run (used by the test suite)

The fake server runs in a subprocess (10 ms latency), so its CPU is not the client's. For each
size, one after another on a fresh event loop, through the same `ChatCompletions` settings
(concurrency 64):

- online: `asyncio.gather` over `chat.process(body)` in chunks of 20,000 (no store);
- a job on SQLite: `JobManager.submit` + `wait` (outcomes recorded every 100 ms);
- jobs on PostgreSQL (a throwaway server, when its binaries are installed), worked by 1, 2 and
  3 `ferrobatch work` processes at once: their CPU from `getrusage(RUSAGE_CHILDREN)`.

Reported: wall time, requests per second, client CPU µs per request, and each job's CPU and
throughput relative to the online path of the same size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embeddings import start_server

CONCURRENCY = 64
CHUNK = 20_000


def client(url: str) -> ChatCompletions:
    return ChatCompletions("fake", base_url=url, api_key="bench", concurrency=CONCURRENCY)


def body(i: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"review {i}"}]}


async def online(url: str, n: int) -> int:
    chat = client(url)
    done = 0
    for start in range(0, n, CHUNK):
        chunk = [chat.process(body(i)) for i in range(start, min(n, start + CHUNK))]
        done += len(await asyncio.gather(*chunk))  # type: ignore[arg-type]
    await chat.stop()
    return done


async def job(url: str, n: int, store: JobStore) -> int:
    chat = client(url)
    async with JobManager(chat, store) as manager:
        j = await manager.create_job(JobRequest(id=f"r{i}", body=body(i)) for i in range(n))
        j = await manager.wait(j.id, poll=0.05)
        p = await manager.progress(j.id)
    await chat.stop()
    return p.succeeded


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def workers(url: str, n: int, dsn: str, count: int, tmp: Path) -> tuple[float, float, int]:
    """Submit a job of `n` requests to PostgreSQL, work it with `count` worker processes;
    wall seconds, their CPU seconds, requests that succeeded."""
    src = tmp / f"in-{n}.jsonl"
    if not src.exists():
        with src.open("w") as f:
            for i in range(n):
                line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
                f.write(json.dumps({**line, "body": {"model": "fake", **body(i)}}) + "\n")
    cli = [sys.executable, "-m", "ferrobatch.cli"]
    name = f"bench-{count}-{time.monotonic_ns()}"
    sub = subprocess.run(
        [*cli, "submit", str(src), "--store", dsn, "--name", name],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = sub.stdout.strip()
    env = {**os.environ, "OPENAI_API_KEY": "bench"}
    cmd = [*cli, "work", "--store", dsn, "--base-url", url, "--until-idle", "--job", job_id]
    cmd += ["--concurrency", str(CONCURRENCY)]
    cpu0, t0 = children_cpu(), time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL) for _ in range(count)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker exited with {p.returncode}")
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    return wall, cpu, JobStore(dsn).progress(job_id).succeeded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="20000", help="comma-separated job sizes")
    p.add_argument("--latency", type=float, default=0.01)
    p.add_argument("--workers", default="1,2,3", help="PostgreSQL worker process counts")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.workers.split(",") if c]
    if args.quick:
        sizes, counts = [300], [1]
    proc, url = start_server(args.latency)
    tmp = tempfile.TemporaryDirectory()
    pg = None
    try:
        from ferrobatch.testing.postgres import PostgresServer, PostgresUnavailable

        try:
            pg = PostgresServer()
        except PostgresUnavailable as e:
            print(f"(PostgreSQL rows skipped: {e})\n")
        rows: list[tuple[int, str, float, float]] = []
        for n in sizes:
            runs = {
                "online: gather over chat.process": lambda n=n: online(url, n),
                "job, SQLite file store": lambda n=n: job(
                    url, n, JobStore(Path(tmp.name) / f"jobs-{n}.db")
                ),
            }
            for name, run in runs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                done = asyncio.run(run())
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if done != n:
                    raise SystemExit(f"{name}: {done} of {n} requests succeeded")
                rows.append((n, name, wall, cpu))
            if pg is not None:
                dsn = pg.create_database()
                for count in counts:
                    wall, cpu, done = workers(url, n, dsn, count, Path(tmp.name))
                    if done != n:
                        raise SystemExit(f"{count} workers: {done} of {n} requests succeeded")
                    label = f"job, PostgreSQL, {count} worker process{'es' if count > 1 else ''}"
                    rows.append((n, label, wall, cpu))
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if pg is not None:
            pg.close()
        tmp.cleanup()
    print(
        f"Jobs: chat requests, server latency {args.latency * 1000:g} ms, concurrency "
        f"{CONCURRENCY} per process; {os.cpu_count()} CPUs\n"
    )
    print(
        "| requests | client | wall s | requests/s | CPU µs per request | CPU / online "
        "| throughput / online |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    base: dict[int, tuple[float, float]] = {}
    for n, name, wall, cpu in rows:
        if name.startswith("online"):
            base[n] = (wall, cpu)
        bw, bc = base[n]
        print(
            f"| {n:,} | {name} | {wall:.2f} | {n / wall:,.0f} | {cpu / n * 1e6:.0f} | "
            f"{cpu / bc:.2f} | {bw / wall:.2f} |"
        )


if __name__ == "__main__":
    main()
