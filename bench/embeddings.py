"""Embeddings client cost: ferrobatch `Embeddings` against the official `openai` SDK.

    python bench/embeddings.py            # 20,000 texts, dimension 1536, 20 ms server latency
    python bench/embeddings.py --quick    # a smoke run (used by the test suite)

The fake server (`python -m ferrobatch.testing`) runs in a subprocess, so the client CPU time
measured here (`time.process_time`, every thread of this process, ferrobatch's Rust threads
included) is the client's alone. Contenders, one after another, each on a fresh event loop:

- ferrobatch `Embeddings` (batches of 256, concurrency 8), `await emb.embed(text)` per text;
- the same with `format="numpy"` (float32 arrays instead of lists of floats), and with
  `format="array"` (stdlib `array.array("f")`);
- the SDK's `AsyncOpenAI.embeddings.create`, fed the same batches of 256, 8 at a time;
- the SDK with one request per text, 64 at a time.

Reported: wall time, client CPU time, HTTP requests sent, and the event loop's largest stall
(a ticker task sleeping 1 ms measures how late it wakes). Every vector is checked against the
fake server's deterministic embedding. Compare ratios from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from _common import start_server, stop_server, ticker

from ferrobatch.openai import Embeddings
from ferrobatch.testing import fake_embedding

MODEL = "text-embedding-3-small"
BATCH = 256
CONCURRENCY = 8
PER_TEXT_CONCURRENCY = 64


@dataclass
class Result:
    wall: float
    cpu: float
    requests: int
    stall_ms: float


Run = Callable[[str, list[str]], Awaitable[tuple[list[Any], int]]]


async def run_ferrobatch(url: str, texts: list[str], fmt: str) -> tuple[list[Any], int]:
    emb = Embeddings(
        MODEL,
        base_url=url,
        api_key="bench",
        max_batch_size=BATCH,
        concurrency=CONCURRENCY,
        format=fmt,  # type: ignore[arg-type]
    )
    vectors = await asyncio.gather(*[emb.embed(t) for t in texts])
    await emb.stop()
    u = emb.usage()[MODEL]
    return list(vectors), u["requests"] + u["retries"]


async def run_sdk_batched(url: str, texts: list[str]) -> tuple[list[Any], int]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=2)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(chunk: list[str]) -> list[Any]:
        async with sem:
            resp = await client.embeddings.create(model=MODEL, input=chunk)
            return [d.embedding for d in resp.data]

    chunks = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    parts = await asyncio.gather(*[one(c) for c in chunks])
    await client.close()
    return [v for p in parts for v in p], len(chunks)


async def run_sdk_per_text(url: str, texts: list[str]) -> tuple[list[Any], int]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=2)
    sem = asyncio.Semaphore(PER_TEXT_CONCURRENCY)

    async def one(text: str) -> Any:
        async with sem:
            resp = await client.embeddings.create(model=MODEL, input=text)
            return resp.data[0].embedding

    vectors = await asyncio.gather(*[one(t) for t in texts])
    await client.close()
    return list(vectors), len(texts)


async def measure(run: Callable[[], Awaitable[tuple[list[Any], int]]], texts: list[str]) -> Result:
    stop = asyncio.Event()
    worst = [0.0]
    tick = asyncio.ensure_future(ticker(stop, worst))
    await asyncio.sleep(0.01)
    worst[0] = 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    vectors, requests = await run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    await tick
    # Every vector must be the fake server's embedding of its own text.
    for i in range(0, len(texts), max(1, len(texts) // 50)):
        want = fake_embedding(texts[i], 1536)
        got = vectors[i]
        if len(got) != 1536 or any(abs(float(a) - b) > 1e-6 for a, b in zip(got, want)):
            raise SystemExit(f"wrong vector for text {i}")
    return Result(wall, cpu, requests, worst[0] * 1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    args = p.parse_args()
    if args.quick:
        args.n, args.reps = 600, 1
    texts = [f"short text number {i} about batching" for i in range(args.n)]
    # Import costs are not client costs: load both libraries before anything is timed.
    import numpy  # noqa: F401
    import openai  # noqa: F401

    proc, url = start_server(args.latency)
    contenders: dict[str, Callable[[], Awaitable[tuple[list[Any], int]]]] = {
        "ferrobatch Embeddings": lambda: run_ferrobatch(url, texts, "list"),
        "ferrobatch Embeddings, format=numpy": lambda: run_ferrobatch(url, texts, "numpy"),
        "ferrobatch Embeddings, format=array": lambda: run_ferrobatch(url, texts, "array"),
        f"openai SDK, batches of {BATCH}": lambda: run_sdk_batched(url, texts),
        "openai SDK, one request per text": lambda: run_sdk_per_text(url, texts),
    }
    results: dict[str, list[Result]] = {k: [] for k in contenders}
    try:
        for rep in range(args.reps):
            for name, run in contenders.items():
                if name.endswith("per text") and rep > 0 and not args.quick:
                    continue  # slow and far behind: once is enough
                results[name].append(asyncio.run(measure(run, texts)))
    finally:
        stop_server(proc)

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[name])

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in ("ferrobatch", "openai", "numpy"))
    print(f"Embeddings: {args.n} texts, dimension 1536, server latency {args.latency * 1000:g} ms")
    print(
        f"({versions}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"medians of {args.reps} runs, per-text SDK once)\n"
    )
    print("| client | wall s | client CPU s | HTTP requests | max loop stall ms |")
    print("|---|---:|---:|---:|---:|")
    for name in contenders:
        print(
            f"| {name} | {med(name, 'wall'):.2f} | {med(name, 'cpu'):.2f} | "
            f"{int(med(name, 'requests'))} | {med(name, 'stall_ms'):.1f} |"
        )
    fb, sdk = "ferrobatch Embeddings", f"openai SDK, batches of {BATCH}"
    fbn = "ferrobatch Embeddings, format=numpy"
    fba = "ferrobatch Embeddings, format=array"
    print("\nRatios against the SDK fed the same batches (higher is better for ferrobatch):\n")
    print("| ratio | lists | numpy | array | target |")
    print("|---|---:|---:|---:|---|")
    for label, attr, target in (
        ("SDK CPU / ferrobatch CPU", "cpu", ">= 5"),
        ("SDK wall / ferrobatch wall", "wall", ">= 1 (no worse)"),
        ("SDK max stall / ferrobatch max stall", "stall_ms", ">= 5"),
    ):
        a = med(sdk, attr) / max(med(fb, attr), 1e-9)
        b = med(sdk, attr) / max(med(fbn, attr), 1e-9)
        c = med(sdk, attr) / max(med(fba, attr), 1e-9)
        print(f"| {label} | {a:.2f} | {b:.2f} | {c:.2f} | {target} |")


if __name__ == "__main__":
    main()
