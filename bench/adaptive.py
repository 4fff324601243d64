"""Adaptive batching: max_queue_time="auto" against fixed windows, under Poisson arrivals.

    python bench/adaptive.py            # prints the table and the target check
    python bench/adaptive.py --plot     # also writes bench/results/adaptive.png
    python bench/adaptive.py --quick    # a smoke run (short, two rates)

The batch function simulates an embeddings call: it sleeps 20 ms + 0.2 ms per item. Four
batches may run at once (concurrency 4), each of up to 256 items. For each arrival rate every
policy gets the same arrival schedule (same seed). Latency is from `process()` to the result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

A, B = 0.020, 0.0002  # seconds per call, seconds per item
CONCURRENCY = 4
MAX_BATCH = 256


async def simulated(batch: list[int]) -> list[int]:
    await asyncio.sleep(A + B * len(batch))
    return batch


@dataclass
class Result:
    p50: float
    p99: float
    throughput: float
    calls: int


def policies() -> dict[str, Callable[[], tuple[Callable[[int], Awaitable[Any]], Any]]]:
    from ferrobatch import AsyncBatcher

    def ferro(window: float | str) -> Callable[[], tuple[Callable[[int], Awaitable[Any]], Any]]:
        def make() -> tuple[Callable[[int], Awaitable[Any]], Any]:
            b = AsyncBatcher(
                simulated, max_batch_size=MAX_BATCH, max_queue_time=window, concurrency=CONCURRENCY
            )  # type: ignore[arg-type]
            return b.process, b

        return make

    out = {
        "auto": ferro("auto"),
        "fixed 1 ms": ferro(0.001),
        "fixed 10 ms": ferro(0.010),
        "fixed 50 ms": ferro(0.050),
    }
    try:
        metadata.version("async-batcher")
    except metadata.PackageNotFoundError:
        return out
    from async_batcher.batcher import AsyncBatcher as Peer

    class Sim(Peer[int, int]):
        async def process_batch(self, batch: list[int]) -> list[int]:
            return await simulated(batch)

    def peer() -> tuple[Callable[[int], Awaitable[Any]], Any]:
        b = Sim(max_batch_size=MAX_BATCH, concurrency=CONCURRENCY)  # its default 10 ms window
        return (lambda i: asyncio.ensure_future(b.process(i))), b

    out["async-batcher (10 ms)"] = peer
    return out


async def run_one(
    make: Callable[[], tuple[Callable[[int], Awaitable[Any]], Any]], arrivals: list[float]
) -> Result:
    submit, batcher = make()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    futs = []
    start = loop.time()
    for i, at in enumerate(arrivals):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = loop.time()
        fut = submit(i)
        fut.add_done_callback(lambda _f, t0=t0: latencies.append(loop.time() - t0))  # type: ignore[attr-defined]
        futs.append(fut)
    await asyncio.gather(*futs)
    elapsed = loop.time() - start
    calls = batcher.stats().batches if hasattr(batcher, "stats") else -1
    await batcher.stop()
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]  # noqa: E731
    return Result(q(0.50), q(0.99), len(arrivals) / elapsed, calls)


def poisson(rate: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; cells are medians")
    args = ap.parse_args()
    rates = [10.0, 1000.0] if args.quick else [10.0, 100.0, 1000.0, 10000.0]
    seconds = {10.0: 8.0, 100.0: 8.0, 1000.0: 3.0, 10000.0: 2.0}
    if args.quick:
        seconds = {10.0: 0.5, 1000.0: 0.3}
    pols = policies()
    reps = 1 if args.quick else args.reps
    runs: dict[tuple[str, float], list[Result]] = {}
    print(
        f"# simulated call: {A * 1000:g} ms + {B * 1000:g} ms/item; concurrency {CONCURRENCY}; "
        f"max_batch_size {MAX_BATCH}; Poisson arrivals"
    )
    for rep in range(reps):  # interleaved, so machine noise spreads over every policy
        for rate in rates:
            n = max(20, int(rate * seconds[rate]))
            arrivals = poisson(rate, n, seed=int(rate) + rep)
            for name, make in pols.items():
                runs.setdefault((name, rate), []).append(asyncio.run(run_one(make, arrivals)))
    results = {
        k: Result(
            statistics.median(r.p50 for r in v),
            statistics.median(r.p99 for r in v),
            statistics.median(r.throughput for r in v),
            int(statistics.median(r.calls for r in v)),
        )
        for k, v in runs.items()
    }
    print(f"# medians of {reps} repetition(s)")

    header = ["rate/s"] + [f"{n}: p50 / p99 ms, items/s" for n in pols]
    rows = []
    for rate in rates:
        row = [f"{rate:,.0f}"]
        for name in pols:
            r = results[(name, rate)]
            row.append(f"{r.p50 * 1000:.1f} / {r.p99 * 1000:.1f}, {r.throughput:,.0f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt(r))

    fixed = [n for n in pols if n.startswith("fixed")]
    print()
    ok = True
    beats = {rates[0]: True, rates[-1]: True}
    for rate in rates:
        best = min(fixed, key=lambda n: results[(n, rate)].p99)
        ratio = results[("auto", rate)].p99 / results[(best, rate)].p99
        ok &= ratio <= 1.2
        print(f"rate {rate:>7,.0f}/s: auto p99 / best fixed p99 ({best}) = {ratio:.2f}")
        if rate in beats:
            beats[rate] = all(results[("auto", rate)].p99 < results[(n, rate)].p99 for n in fixed)
    print(f"auto within 20% of the best fixed window at every rate: {'yes' if ok else 'NO'}")
    print(
        "auto beats every fixed window at the low end: "
        + ("yes" if beats[rates[0]] else "no")
        + "; at the high end: "
        + ("yes" if beats[rates[-1]] else "no")
    )
    if args.plot:
        plot(pols, rates, results)


def plot(
    pols: dict[str, Any], rates: list[float], results: dict[tuple[str, float], Result]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in pols:
        style = "o-" if name == "auto" else "s--"
        ax1.plot(rates, [results[(name, r)].p99 * 1000 for r in rates], style, label=name)
        ax2.plot(rates, [results[(name, r)].p50 * 1000 for r in rates], style, label=name)
    for ax, title in ((ax1, "p99 latency"), (ax2, "p50 latency")):
        ax.set_xscale("log")
        ax.set_xlabel("arrival rate, items/s (Poisson)")
        ax.set_ylabel("ms")
        ax.set_title(f"{title}: {A * 1000:g} ms + {B * 1000:g} ms/item, concurrency {CONCURRENCY}")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "adaptive.png"), dpi=110)
    print(f"\nplot: {os.path.join(out, 'adaptive.png')}")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"# took {time.perf_counter() - t:.0f} s")
