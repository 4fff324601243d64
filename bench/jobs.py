"""Batch job overhead: what the durable store costs per request.

    python bench/jobs.py            # 5,000 chat requests, fake server with 5 ms latency
    python bench/jobs.py --quick    # a smoke run (used by the test suite)

The fake server runs in a subprocess. Contenders, one after another on a fresh event loop,
all through one `ChatCompletions` setting (concurrency 64):

- `asyncio.gather` over `chat.create(...)`: no job, no store (the floor);
- `BatchManager` with an in-memory store;
- `BatchManager` with a SQLite file store (WAL; every result committed as it arrives).

Reported: wall time, requests per second, client CPU time, and each job's cost relative to
the floor. Medians of --reps runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ferrobatch.jobs import BatchManager, BatchRequest, BatchStore
from ferrobatch.openai import ChatCompletions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embeddings import start_server

CONCURRENCY = 64


def client(url: str) -> ChatCompletions:
    return ChatCompletions("fake", base_url=url, api_key="bench", concurrency=CONCURRENCY)


def bodies(n: int) -> list[dict[str, object]]:
    return [{"messages": [{"role": "user", "content": f"review {i}"}]} for i in range(n)]


async def floor(url: str, n: int) -> int:
    chat = client(url)
    resps = await asyncio.gather(*[chat.process(b) for b in bodies(n)])  # type: ignore[arg-type]
    await chat.stop()
    return len(resps)


async def job(url: str, n: int, store: BatchStore) -> int:
    chat = client(url)
    async with BatchManager(chat, store, window=4 * CONCURRENCY) as manager:
        reqs = [BatchRequest(id=f"r{i}", body=b) for i, b in enumerate(bodies(n))]
        j = await manager.submit(reqs)
        j = await manager.wait(j.id, poll=0.02)
        p = await manager.progress(j.id)
    await chat.stop()
    return p.succeeded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--latency", type=float, default=0.005)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.reps = 300, 1
    proc, url = start_server(args.latency)
    tmp = tempfile.TemporaryDirectory()
    runs: dict[str, Callable[[], Awaitable[int]]] = {
        "gather over chat.create (no job)": lambda: floor(url, args.n),
        "BatchManager, in-memory store": lambda: job(url, args.n, BatchStore()),
        "BatchManager, SQLite file store": lambda: job(
            url, args.n, BatchStore(Path(tmp.name) / f"jobs-{time.monotonic_ns()}.db")
        ),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    try:
        for _ in range(args.reps):
            for name, run in runs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                done = asyncio.run(run())
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if done != args.n:
                    raise SystemExit(f"{name}: {done} of {args.n} requests succeeded")
                results[name].append((wall, cpu))
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        tmp.cleanup()
    print(
        f"Jobs: {args.n} chat requests, server latency {args.latency * 1000:g} ms, "
        f"concurrency {CONCURRENCY}; {os.cpu_count()} CPUs; medians of {args.reps} runs\n"
    )
    print("| client | wall s | requests/s | client CPU s | CPU µs per request | wall / floor |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(w for w, _ in results["gather over chat.create (no job)"])
    for name, rs in results.items():
        wall = statistics.median(w for w, _ in rs)
        cpu = statistics.median(c for _, c in rs)
        print(
            f"| {name} | {wall:.2f} | {args.n / wall:,.0f} | {cpu:.2f} | "
            f"{cpu / args.n * 1e6:.0f} | {wall / base:.2f} |"
        )


if __name__ == "__main__":
    main()
