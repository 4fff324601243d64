"""Core speed: ferrobatch against the pure-Python batchers and a bare-asyncio floor.

    python bench/core.py            # full run (N = 100k and 1M), prints tables and ratios
    python bench/core.py --plot     # also writes bench/results/core.png
    python bench/core.py --quick    # a smoke run with small N (used by the test suite)

Every number in one table comes from the same run on the same machine: compare ratios, not
absolute values, on a shared machine. Each cell is the median of --reps repetitions, with
min and max. Peers come from the `bench` extra (pip install ".[bench]"); a peer that is not
installed is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

BATCH = 64
Mode = str  # "async" | "sync" | "conc4"


# --- the contenders ---------------------------------------------------------------------------
# Each `make_*` returns (submit, close): submit(items) returns one awaitable per item the way a
# user of that library writes it; close() releases the batcher.


async def _double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def _double_sync(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


async def _double_yield(batch: list[int]) -> list[int]:
    await asyncio.sleep(0)
    return [x * 2 for x in batch]


def batch_fn(mode: Mode) -> Callable[[list[int]], Any]:
    return {"async": _double, "sync": _double_sync, "conc4": _double_yield}[mode]


def concurrency(mode: Mode) -> int:
    return 4 if mode == "conc4" else -1


Submit = Callable[[range], list[Awaitable[int]]]
Close = Callable[[], Awaitable[None]]


async def _noop() -> None:
    return None


def make_ferrobatch(
    mode: Mode, window: float = 0.01, conc: int | None = None
) -> tuple[Submit, Close]:
    """ferrobatch at its default concurrency (1), or 4 in the concurrency workload."""
    from ferrobatch import AsyncBatcher

    if conc is None:
        conc = 4 if mode == "conc4" else 1
    b = AsyncBatcher(batch_fn(mode), max_batch_size=BATCH, max_queue_time=window, concurrency=conc)
    process = b.process
    return (lambda items: [process(i) for i in items]), b.stop


def make_ferrobatch_metrics(mode: Mode, window: float = 0.01) -> tuple[Submit, Close]:
    """ferrobatch tracked by `ferrobatch.metrics`, scraped (Prometheus text) every 50 ms:
    far more often than any scraper, to show what exporting costs."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ferrobatch import AsyncBatcher, metrics

    conc = 4 if mode == "conc4" else 1
    b = AsyncBatcher(batch_fn(mode), max_batch_size=BATCH, max_queue_time=window, concurrency=conc)
    metrics.track(b, name="bench")
    registry = CollectorRegistry()
    metrics.enable_prometheus(registry)

    async def scrape() -> None:
        while True:
            generate_latest(registry)
            await asyncio.sleep(0.05)

    scraper = asyncio.ensure_future(scrape())

    async def close() -> None:
        scraper.cancel()
        metrics.untrack(b)
        await b.stop()

    process = b.process
    return (lambda items: [process(i) for i in items]), close


def make_ferrobatch_unlimited(mode: Mode, window: float = 0.01) -> tuple[Submit, Close] | None:
    """ferrobatch with concurrency=-1, the setting async-batcher runs with here."""
    if mode == "conc4":
        return None
    return make_ferrobatch(mode, window, conc=-1)


def make_ferrobatch_many(mode: Mode, window: float = 0.01) -> tuple[Submit, Close]:
    from ferrobatch import AsyncBatcher

    b = AsyncBatcher(
        batch_fn(mode), max_batch_size=BATCH, max_queue_time=window, concurrency=concurrency(mode)
    )
    return (lambda items: [b.process_many(items)]), b.stop  # one awaitable of a list


def make_async_batcher(mode: Mode, window: float = 0.01) -> tuple[Submit, Close]:
    from async_batcher.batcher import AsyncBatcher

    fn = batch_fn(mode)

    class Peer(AsyncBatcher[int, int]):
        pass

    if asyncio.iscoroutinefunction(fn):

        async def process_batch(self: Any, batch: list[int]) -> list[int]:
            return await fn(batch)  # type: ignore[no-any-return]
    else:

        def process_batch(self: Any, batch: list[int]) -> list[int]:  # type: ignore[misc]
            return fn(batch)  # type: ignore[no-any-return]

    Peer.process_batch = process_batch  # type: ignore[method-assign,assignment]
    Peer.__abstractmethods__ = frozenset()
    b = Peer(max_batch_size=BATCH, max_queue_time=window, concurrency=concurrency(mode))
    return (lambda items: [b.process(i) for i in items]), b.stop


def make_aiodataloader(mode: Mode, window: float = 0.01) -> tuple[Submit, Close] | None:
    if mode == "sync":
        return None  # aiodataloader requires a coroutine batch function
    from aiodataloader import DataLoader

    loader = DataLoader(batch_fn(mode), max_batch_size=BATCH, cache=False)
    return (lambda items: [loader.load(i) for i in items]), _noop


def make_batched(mode: Mode, window: float = 0.001) -> tuple[Submit, Close]:
    from batched import aio

    fn = aio.dynamically(batch_fn(mode), batch_size=BATCH, timeout_ms=window * 1000)
    return (lambda items: [fn(i) for i in items]), _noop


def make_floor(mode: Mode, window: float = 0.0) -> tuple[Submit, Close] | None:
    """The least any asyncio batcher can do per item: one Future, resolved 64 at a time by a
    synchronous batch function, flushed on the next loop step."""
    if mode != "async":
        return None
    loop = asyncio.get_running_loop()
    pending: list[tuple[int, asyncio.Future[int]]] = []
    scheduled = False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        while pending:
            chunk = pending[:BATCH]
            del pending[:BATCH]
            results = _double_sync([x for x, _ in chunk])
            for (_, fut), r in zip(chunk, results):
                if not fut.done():
                    fut.set_result(r)

    def process(x: int) -> asyncio.Future[int]:
        nonlocal scheduled
        fut = loop.create_future()
        pending.append((x, fut))
        if not scheduled:
            scheduled = True
            loop.call_soon(flush)
        return fut

    return (lambda items: [process(i) for i in items]), _noop


CONTENDERS: dict[str, tuple[str | None, Callable[..., Any]]] = {
    # name: (PyPI distribution for the version column, factory)
    "ferrobatch": ("ferrobatch", make_ferrobatch),
    "ferrobatch + metrics": ("prometheus-client", make_ferrobatch_metrics),
    "ferrobatch (concurrency=-1)": ("ferrobatch", make_ferrobatch_unlimited),
    "ferrobatch.process_many": ("ferrobatch", make_ferrobatch_many),
    "async-batcher": ("async-batcher", make_async_batcher),
    "aiodataloader": ("aiodataloader", make_aiodataloader),
    "batched": ("batched", make_batched),
    "asyncio floor": (None, make_floor),
}


def available() -> list[str]:
    names = []
    for name, (dist, _) in CONTENDERS.items():
        if dist is None:
            names.append(name)
            continue
        try:
            metadata.version(dist)
            names.append(name)
        except metadata.PackageNotFoundError:
            print(f'# skipped {name}: {dist} is not installed (pip install ".[bench]")')
    return names


def version(name: str) -> str:
    dist = CONTENDERS[name][0]
    return metadata.version(dist) if dist else "-"


# --- measurements -------------------------------------------------------------------------------


async def throughput_once(name: str, mode: Mode, n: int) -> float | None:
    made = CONTENDERS[name][1](mode)
    if made is None:
        return None
    submit, close = made
    gc.collect()
    t0 = time.perf_counter()
    results = await asyncio.gather(*submit(range(n)))
    elapsed = time.perf_counter() - t0
    flat = results[0] if name.endswith("process_many") else results
    if len(flat) != n or flat[-1] != 2 * (n - 1):
        raise AssertionError(f"{name} returned wrong results")
    await close()
    return n / elapsed


async def latency_once(name: str, n: int, rate: float) -> tuple[float, float, float] | None:
    """Items arrive one by one at ~rate/s; returns (p50, p99, window) of process-to-result."""
    factory = CONTENDERS[name][1]
    window = {"ferrobatch": 0.01, "async-batcher": 0.01, "batched": 0.001}.get(name, 0.0)
    made = (
        factory("async", window)
        if name.startswith("ferrobatch") is False or name == "ferrobatch"
        else None
    )
    if made is None:
        return None
    submit, close = made
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    tasks = []

    async def one(i: int) -> None:
        t0 = loop.time()
        await submit(range(i, i + 1))[0]
        latencies.append(loop.time() - t0)

    start = time.perf_counter()
    for i in range(n):
        tasks.append(asyncio.ensure_future(one(i)))
        # pace arrivals against the wall clock so sleep granularity does not drift the rate
        delay = start + (i + 1) / rate - time.perf_counter()
        await asyncio.sleep(max(delay, 0))
    await asyncio.gather(*tasks)
    await close()
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return p(0.50), p(0.99), window


def peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss, which Linux carries across
    fork+exec from the parent, VmHWM belongs to the process's own address space."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(name: str, n: int) -> None:
    """In a fresh process: peak RSS growth and peak traced Python heap for n queued items."""

    async def run(trace: bool) -> int:
        made = CONTENDERS[name][1]("async", 0.01)
        submit, close = made
        if trace:
            tracemalloc.start()
        awaitables = submit(range(n))  # every item queued before the loop runs any batch
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        await asyncio.gather(*awaitables)
        await close()
        return peak

    base = peak_rss_kib()
    asyncio.run(run(False))
    rss = peak_rss_kib() - base
    heap = asyncio.run(run(True))
    print(json.dumps({"rss_kib": rss, "heap_bytes": heap}))


def memory(name: str, n: int) -> dict[str, float] | None:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", name, str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(f"# memory run of {name} failed: {out.stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- reporting ------------------------------------------------------------------------------------


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, fmt: str = "{:,.0f}") -> str:
        if not self.values:
            return "n/a"
        lo, hi = fmt.format(min(self.values)), fmt.format(max(self.values))
        return f"{fmt.format(self.median)} ({lo}-{hi})"


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"\n### {title}\n", line(header), sep, *(line(r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small N, one repetition (smoke test)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--plot", action="store_true", help="write bench/results/core.png")
    ap.add_argument("--only", nargs="*", help="contenders to run (default: all installed)")
    ap.add_argument("--memory-child", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return

    names = [n for n in available() if not args.only or n in args.only]
    reps = 1 if args.quick else args.reps
    sizes = [2_000] if args.quick else [100_000, 1_000_000]
    workloads = [("async", n) for n in sizes] + [("sync", sizes[0]), ("conc4", sizes[0])]
    low_n = 50 if args.quick else 1_000
    mem_n = 20_000 if args.quick else 1_000_000

    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} cores, reps={reps}")
    print("# versions: " + ", ".join(f"{n} {version(n)}" for n in names))

    thr: dict[tuple[str, str, int], Cell] = {}
    for mode, n in workloads:
        for _ in range(reps):
            for name in names:  # interleave contenders so drift hits all of them alike
                v = asyncio.run(throughput_once(name, mode, n))
                cell = thr.setdefault((name, mode, n), Cell())
                if v is not None:
                    cell.values.append(v)
    labels = {"async": "async fn", "sync": "sync fn", "conc4": "concurrency 4, sleep(0)"}
    header = ["library"] + [f"{labels[m]}, N={n:,}" for m, n in workloads]
    rows = []
    for name in names:
        rows.append([name] + [thr[(name, m, n)].show() for m, n in workloads])
    print(table("Throughput, items/s: median (min-max)", header, rows))
    ratio_rows = []
    for name in names:
        cells = []
        for m, n in workloads:
            ours, theirs = thr[("ferrobatch", m, n)], thr[(name, m, n)]
            cells.append(
                f"{ours.median / theirs.median:.2f}x" if ours.values and theirs.values else "n/a"
            )
        ratio_rows.append([name, *cells])
    print(
        table(
            "ferrobatch per-item process() items/s divided by each contender's", header, ratio_rows
        )
    )

    lat: dict[str, Cell] = {}
    lat99: dict[str, Cell] = {}
    windows: dict[str, float] = {}
    for _ in range(reps):
        for name in names:
            r = asyncio.run(latency_once(name, low_n, 1_000.0))
            if r is None:
                continue
            lat.setdefault(name, Cell()).values.append(r[0] * 1000)
            lat99.setdefault(name, Cell()).values.append(r[1] * 1000)
            windows[name] = r[2] * 1000
    rows = [
        [
            name,
            f"{windows[name]:g}",
            lat[name].show("{:.2f}"),
            lat99[name].show("{:.2f}"),
            f"{lat99[name].median - windows[name]:+.2f}",
        ]
        for name in names
        if name in lat
    ]
    print(
        table(
            f"Low load: {low_n:,} items arriving at ~1,000/s, latency in ms",
            ["library", "window", "p50", "p99", "p99 - window"],
            rows,
        )
    )

    mem = {name: memory(name, mem_n) for name in names}
    floor = mem.get("asyncio floor")
    rows = []
    for name in names:
        m = mem[name]
        if m is None:
            continue
        ratio = f"{m['rss_kib'] / floor['rss_kib']:.2f}x" if floor and floor["rss_kib"] else "n/a"
        rows.append([name, f"{m['rss_kib'] / 1024:,.1f}", ratio, f"{m['heap_bytes'] / 2**20:,.1f}"])
    print(
        table(
            f"Memory: {mem_n:,} items queued at once",
            [
                "library",
                "peak RSS growth, MiB",
                "vs floor",
                "traced Python heap at queue time, MiB",
            ],
            rows,
        )
    )

    if args.plot:
        plot(names, workloads, thr, labels)


def plot(
    names: list[str],
    workloads: list[tuple[str, int]],
    thr: dict[tuple[str, str, int], Cell],
    labels: dict[str, str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [thr[(name, m, n)].median if thr[(name, m, n)].values else 0 for m, n in workloads]
        xs = [j + i * width for j in range(len(workloads))]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))])
    ax.set_xticklabels([f"{labels[m]}\nN={n:,}" for m, n in workloads])
    ax.set_yscale("log")
    ax.set_ylabel("items/s (log scale, median)")
    ax.set_title("ferrobatch vs peers: throughput per workload (one run, same machine)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "core.png"), dpi=110)
    print(f"\nplot: {os.path.join(out, 'core.png')}")


if __name__ == "__main__":
    main()
