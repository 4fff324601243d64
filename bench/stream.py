"""Streaming chat client cost: ferrobatch `ChatCompletions.stream` against the official
`openai` SDK's streaming, over the same local fake server.

    python bench/stream.py            # 400 streams of ~100 chunks, 64 at a time; 3 repetitions
    python bench/stream.py --quick    # a smoke run (used by the test suite)

The fake server (`python -m ferrobatch.testing`) runs in a subprocess, so the CPU time
measured (`time.process_time`: every thread of this process, ferrobatch's Rust threads
included) is the client's alone. Reported:

- client CPU µs per streamed chunk, many streams at once (the text of every stream checked);
- time to first chunk, one stream at a time, p50/p99, beside a floor: a raw asyncio socket
  that sends the same request and waits for the first `data:` line (what any client must
  pay); the difference is what the client adds;
- memory: RSS growth while a consumer sleeps 1 s after 50 chunks of a 20 MiB stream (the
  fake server in this process makes its stream only as it is read, so the growth is the
  client's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata

from _common import start_server, stop_server

from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer

MODEL = "gpt-x"


def question(i: int, words: int) -> list[dict[str, str]]:
    """The fake server echoes the first 200 characters, a chunk per word: one-letter words
    make a stream of up to ~100 chunks."""
    text = f"q{i} " + " ".join("abcdefghij"[k % 10] for k in range(words))
    return [{"role": "user", "content": text}]


def expected(i: int, words: int) -> str:
    return "fake reply to: " + question(i, words)[0]["content"][:200]


async def run_streams(
    n: int, words: int, concurrency: int, pieces: Callable[[int], AsyncIterator[str | None]]
) -> int:
    """`n` streams, `concurrency` at a time, each stream's text checked; chunks received."""
    sem = asyncio.Semaphore(concurrency)
    chunks = 0

    async def one(i: int) -> None:
        nonlocal chunks
        text = []
        async with sem:
            async for piece in pieces(i):
                chunks += 1
                text.append(piece or "")
        if "".join(text) != expected(i, words):
            raise SystemExit(f"wrong text for stream {i}")

    await asyncio.gather(*(one(i) for i in range(n)))
    return chunks


async def ferrobatch_streams(url: str, n: int, words: int, concurrency: int) -> int:
    chat = ChatCompletions(MODEL, base_url=url, api_key="bench", concurrency=concurrency)

    async def pieces(i: int) -> AsyncIterator[str | None]:
        async for c in chat.stream(messages=question(i, words)):
            yield c["choices"][0]["delta"].get("content") if c["choices"] else None

    chunks = await run_streams(n, words, concurrency, pieces)
    await chat.stop()
    return chunks


async def sdk_streams(url: str, n: int, words: int, concurrency: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=2)

    async def pieces(i: int) -> AsyncIterator[str | None]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=question(i, words),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for c in stream:
            yield c.choices[0].delta.content if c.choices else None

    chunks = await run_streams(n, words, concurrency, pieces)
    await client.close()
    return chunks


async def first_chunk_times(kind: str, url: str, n: int) -> list[float]:
    """Seconds to the first chunk of `n` streams, one at a time."""
    out = []
    if kind == "ferrobatch":
        chat = ChatCompletions(MODEL, base_url=url, api_key="bench")
        for i in range(n):
            t = time.perf_counter()
            s = chat.stream(messages=question(i, 5))
            await s.__anext__()
            out.append(time.perf_counter() - t)
            await s.aclose()
        await chat.stop()
    elif kind == "openai SDK":
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=url, api_key="bench")
        for i in range(n):
            t = time.perf_counter()
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=question(i, 5),  # type: ignore[arg-type]
                stream=True,
            )
            await stream.__anext__()
            out.append(time.perf_counter() - t)
            await stream.close()
        await client.close()
    else:  # the floor: a raw socket, the same request, up to the first `data:` line
        host, port = url.split("//")[1].split("/")[0].split(":")
        for i in range(n):
            t = time.perf_counter()
            reader, writer = await asyncio.open_connection(host, int(port))
            import json

            body = json.dumps({"model": MODEL, "messages": question(i, 5), "stream": True}).encode()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            while b"data:" not in await reader.readline():
                pass
            out.append(time.perf_counter() - t)
            writer.close()
    return out


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def stalled_growth(kind: str) -> float:
    """RSS growth (MiB) while the consumer of a 20 MiB stream sleeps after 50 chunks."""
    with FakeServer() as server:
        server.fault("stream_long", done=20_000)
        gc.collect()
        before = rss_mib()
        grown = 0.0
        if kind == "ferrobatch":
            chat = ChatCompletions(MODEL, base_url=server.openai_base_url, api_key="bench")
            n = 0
            async with chat.stream(messages=question(0, 3)) as s:
                async for _ in s:
                    n += 1
                    if n == 50:
                        await asyncio.sleep(1.0)
                        grown = rss_mib() - before
                        break
            await chat.stop()
        else:
            from openai import AsyncOpenAI

            client = AsyncOpenAI(base_url=server.openai_base_url, api_key="bench")
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=question(0, 3),  # type: ignore[arg-type]
                stream=True,
            )
            n = 0
            async for _ in stream:
                n += 1
                if n == 50:
                    await asyncio.sleep(1.0)
                    grown = rss_mib() - before
                    break
            await stream.close()
            await client.close()
        return grown


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="streams")
    p.add_argument("--words", type=int, default=100, help="chunks per stream, about (<= 100)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.words, args.reps = 20, 20, 1
    import openai  # noqa: F401  (import cost is not client cost)

    proc, url = start_server(0.0)
    contenders: dict[str, Callable[[], Awaitable[int]]] = {
        "ferrobatch ChatCompletions.stream": lambda: ferrobatch_streams(
            url, args.n, args.words, args.concurrency
        ),
        "openai SDK AsyncOpenAI (stream=True)": lambda: sdk_streams(
            url, args.n, args.words, args.concurrency
        ),
    }
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    counts: dict[str, int] = {}
    ttft: dict[str, list[float]] = {"raw socket (floor)": [], "ferrobatch": [], "openai SDK": []}
    try:
        for _ in range(args.reps):
            for name, run in contenders.items():
                c0, t0 = time.process_time(), time.perf_counter()
                counts[name] = asyncio.run(run())
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append((time.process_time() - c0) / counts[name] * 1e6)
            for kind in ttft:
                ttft[kind].extend(
                    asyncio.run(first_chunk_times(kind, url, 50 if args.quick else 200))
                )
    finally:
        stop_server(proc)
    growth = {k: asyncio.run(stalled_growth(k)) for k in ("ferrobatch", "openai SDK")}

    print(
        f"Streaming chat: {args.n} streams of ~{args.words} chunks, {args.concurrency} at a time; "
        f"medians of {args.reps} (Python {sys.version.split()[0]}, "
        f"openai {metadata.version('openai')})\n"
    )
    print("| client | chunks | wall s | client CPU µs per chunk |")
    print("|---|---:|---:|---:|")
    for name in contenders:
        print(
            f"| {name} | {counts[name]} | {statistics.median(wall[name]):.2f} "
            f"| {statistics.median(cpu[name]):.1f} |"
        )
    ours, sdk = (statistics.median(cpu[n]) for n in contenders)
    print(f"\nCPU ratio per chunk (SDK / ferrobatch): {sdk / ours:.1f}x")
    print("\n| time to first chunk, one stream at a time | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for kind, values in ttft.items():
        print(f"| {kind} | {pct(values, 0.5) * 1e3:.2f} | {pct(values, 0.99) * 1e3:.2f} |")
    floor = ttft["raw socket (floor)"]
    added = pct(ttft["ferrobatch"], 0.99) - pct(floor, 0.99)
    print(f"\nferrobatch adds {added * 1e3:.2f} ms at p99 to the first chunk over a raw socket")
    print(
        "\nStalled consumer, 20 MiB stream, RSS growth: "
        + ", ".join(f"{k} {v:.1f} MiB" for k, v in growth.items())
    )


if __name__ == "__main__":
    main()
