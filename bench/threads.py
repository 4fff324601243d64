"""Callers on threads: ferrobatch's `process_sync` against mixedbread's `batched` (its thread
path) and a hand-written queue + background-thread DataLoader, the pattern the batching
tutorials build.

    python bench/threads.py            # 16 and 256 threads, prints tables and ratios
    python bench/threads.py --quick    # a smoke run (used by the test suite)

T threads each call one item at a time (call, wait for its result, call again) until N items
are done; every batch function is `[x * 2 for x in batch]` with batches of at most 64. Each
cell is the median of --reps repetitions (min-max); repetitions interleave the contenders.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata

from core import Cell, table

BATCH = 64
WINDOW = 0.001  # seconds a partial batch may wait, where a contender has such a setting

Call = Callable[[int], int]


def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def make_ferrobatch(auto: bool) -> tuple[Call, Callable[[], None]]:
    from ferrobatch import AsyncBatcher

    b: AsyncBatcher[int, int] = AsyncBatcher(
        double, max_batch_size=BATCH, max_queue_time="auto" if auto else WINDOW
    )
    return b.process_sync, b.stop_sync


def make_batched() -> tuple[Call, Callable[[], None]] | None:
    try:
        import batched
    except ImportError:
        return None
    proc = batched.dynamically(double, batch_size=BATCH, timeout_ms=WINDOW * 1000)
    return proc, proc.shutdown


def make_dataloader() -> tuple[Call, Callable[[], None]]:
    """The tutorial DataLoader: callers put (item, Future) on a queue; one background thread
    takes up to 64 (waiting at most WINDOW after the first), runs the batch, sets results."""
    q: queue.Queue[tuple[int, concurrent.futures.Future[int]] | None] = queue.Queue()

    def loop() -> None:
        while True:
            first = q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + WINDOW
            while len(batch) < BATCH:
                left = deadline - time.monotonic()
                try:
                    nxt = q.get(timeout=left) if left > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    q.put(None)
                    break
                batch.append(nxt)
            for (_, fut), r in zip(batch, double([x for x, _ in batch])):
                fut.set_result(r)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()

    def call(x: int) -> int:
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        q.put((x, fut))
        return fut.result()

    def close() -> None:
        q.put(None)
        worker.join()

    return call, close


CONTENDERS: dict[str, Callable[[], tuple[Call, Callable[[], None]] | None]] = {
    'ferrobatch (max_queue_time="auto")': lambda: make_ferrobatch(True),
    "ferrobatch (max_queue_time=1 ms)": lambda: make_ferrobatch(False),
    "batched (timeout_ms=1)": make_batched,
    "queue + thread DataLoader (1 ms)": make_dataloader,
}


def throughput_once(name: str, threads: int, n: int) -> float | None:
    made = CONTENDERS[name]()
    if made is None:
        return None
    call, close = made
    per = n // threads
    errors: list[BaseException] = []
    start_gate = threading.Barrier(threads + 1)

    def caller(base: int) -> None:
        start_gate.wait()
        try:
            for i in range(base, base + per):
                if call(i) != 2 * i:
                    raise AssertionError(f"wrong result for {i}")
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=caller, args=(t * per,)) for t in range(threads)]
    for t in ts:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    close()
    if errors:
        raise errors[0]
    return per * threads / elapsed


def version(name: str) -> str:
    dist = name.split(" ")[0]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small N, one repetition")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    workloads = [(16, 2_000), (256, 4_096)] if args.quick else [(16, 100_000), (256, 100_000)]
    names = [n for n in CONTENDERS if n.startswith(("ferrobatch", "queue")) or version(n) != "-"]
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} cores, reps={reps}")
    print("# versions: " + ", ".join(f"{n.split(' ')[0]} {version(n)}" for n in names))

    cells: dict[tuple[str, int], Cell] = {}
    for threads, n in workloads:
        for _ in range(reps):
            for name in names:
                v = throughput_once(name, threads, n)
                if v is not None:
                    cells.setdefault((name, threads), Cell()).values.append(v)
    header = ["library"] + [f"{t} threads, N={n:,}" for t, n in workloads]
    rows = [[name] + [cells[(name, t)].show() for t, _ in workloads] for name in names]
    print(table("Throughput, items/s: median (min-max)", header, rows))
    ours = 'ferrobatch (max_queue_time="auto")'
    ratio_rows = [
        [name] + [f"{cells[(ours, t)].median / cells[(name, t)].median:.2f}x" for t, _ in workloads]
        for name in names
    ]
    print(table(f"{ours} items/s divided by each contender's", header, ratio_rows))


if __name__ == "__main__":
    main()
