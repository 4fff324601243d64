"""Chat fan-out client cost: ferrobatch `ChatCompletions` against the official `openai` SDK and
LiteLLM, each in a fresh process, against the same fake server.

    python bench/chat.py            # 3,000 requests, 64 in flight, 10 ms server latency
    python bench/chat.py --quick    # a smoke run (used by the test suite)

The fake server (`python -m ferrobatch.testing`) runs in its own process; each contender runs
in a fresh Python process of its own (so no client warms another's caches), imports its
library before the clock starts, and reports its process CPU time (`time.process_time`: every
thread, ferrobatch's Rust threads included) and how much of it the event loop's own thread
spent (`time.thread_time`), wall time, and the event loop's largest stall.
Contenders:

- ferrobatch `ChatCompletions.create(...)` per request, 64 awaited at a time;
- the SDK's `AsyncOpenAI.chat.completions.create` under an `asyncio.Semaphore(64)`;
- LiteLLM's `acompletion` under the same semaphore (when `litellm` is installed).

Every answer is checked ("fake reply to: <message>"). Medians of `--reps` runs; compare ratios
from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata

from _common import start_server, stop_server, ticker

MODEL = "gpt-4o-mini"
IN_FLIGHT = 64


def prompts(n: int) -> list[str]:
    return [f"question number {i}: what is batching?" for i in range(n)]


async def bounded(make: Callable[[str], Awaitable[str]], texts: list[str]) -> list[str]:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(t: str) -> str:
        async with sem:
            return await make(t)

    return list(await asyncio.gather(*(one(t) for t in texts)))


async def run_ferrobatch(url: str, texts: list[str]) -> list[str]:
    from ferrobatch.openai import ChatCompletions

    chat = ChatCompletions(MODEL, base_url=url, api_key="bench", concurrency=IN_FLIGHT)

    async def one(t: str) -> str:
        r = await chat.create(messages=[{"role": "user", "content": t}])
        content: str = r["choices"][0]["message"]["content"]
        return content

    out = await bounded(one, texts)
    await chat.stop()
    return out


async def run_sdk(url: str, texts: list[str]) -> list[str]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=2)

    async def one(t: str) -> str:
        r = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": t}]
        )
        return r.choices[0].message.content or ""

    out = await bounded(one, texts)
    await client.close()
    return out


async def run_litellm(url: str, texts: list[str]) -> list[str]:
    import litellm

    async def one(t: str) -> str:
        r = await litellm.acompletion(
            model=f"openai/{MODEL}",
            api_base=url,
            api_key="bench",
            messages=[{"role": "user", "content": t}],
        )
        return str(r.choices[0].message.content)

    return await bounded(one, texts)


CONTENDERS: dict[str, tuple[str, Callable[[str, list[str]], Awaitable[list[str]]]]] = {
    "ferrobatch ChatCompletions": ("ferrobatch", run_ferrobatch),
    f"openai SDK AsyncOpenAI, semaphore {IN_FLIGHT}": ("openai", run_sdk),
    f"LiteLLM acompletion, semaphore {IN_FLIGHT}": ("litellm", run_litellm),
}


async def measure(name: str, url: str, n: int) -> dict[str, float]:
    module, run = CONTENDERS[name]
    __import__(module)  # import costs are not client costs
    texts = prompts(n)
    stop = asyncio.Event()
    worst = [0.0]
    tick = asyncio.ensure_future(ticker(stop, worst))
    await asyncio.sleep(0.01)
    worst[0] = 0.0
    c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    answers = await run(url, texts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    main_cpu = time.thread_time() - m0
    stop.set()
    await tick
    for t, a in zip(texts, answers):
        if a != f"fake reply to: {t}":
            raise SystemExit(f"{name}: wrong answer {a!r} for {t!r}")
    return {"wall": wall, "cpu": cpu, "main_cpu": main_cpu, "stall_ms": worst[0] * 1000}


def installed(pkg: str) -> bool:
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--latency", type=float, default=0.01)
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one contender
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.one, args.url, args.n))))
        return
    if args.quick:
        args.n, args.reps = 200, 1
    names = [n for n, (pkg, _) in CONTENDERS.items() if installed(pkg)]
    skipped = [CONTENDERS[n][0] for n in CONTENDERS if n not in names]
    proc, url = start_server(args.latency)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        for _ in range(args.reps):
            for name in names:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", name, "--url", url, "--n", str(args.n)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        stop_server(proc)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    versions = ", ".join(
        f"{pkg} {metadata.version(pkg)}"
        for pkg in ("ferrobatch", "openai", "litellm")
        if installed(pkg)
    )
    print(
        f"Chat fan-out: {args.n} requests, {IN_FLIGHT} in flight, server latency "
        f"{args.latency * 1000:g} ms"
    )
    print(
        f"({versions}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"fresh process per run; medians of {args.reps} runs"
        + (f"; not installed: {', '.join(skipped)}" if skipped else "")
        + ")\n"
    )
    print(
        "| client | wall s | client CPU s | CPU µs per request | of which the loop's thread "
        "| max loop stall ms |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        cpu, main_cpu = med(name, "cpu"), med(name, "main_cpu")
        print(
            f"| {name} | {med(name, 'wall'):.2f} | {cpu:.2f} | {cpu / args.n * 1e6:.0f} | "
            f"{main_cpu / args.n * 1e6:.0f} | {med(name, 'stall_ms'):.1f} |"
        )
    fb = "ferrobatch ChatCompletions"
    print("\nRatios against ferrobatch (higher is better for ferrobatch):\n")
    print("| peer | CPU ratio | wall ratio | target |")
    print("|---|---:|---:|---|")
    for name in names:
        if name == fb:
            continue
        cpu = med(name, "cpu") / max(med(fb, "cpu"), 1e-9)
        wall = med(name, "wall") / max(med(fb, "wall"), 1e-9)
        target = "CPU >= 30, wall >= 1" if name.startswith("openai") else "-"
        print(f"| {name} | {cpu:.1f} | {wall:.2f} | {target} |")


if __name__ == "__main__":
    main()
