"""One-shot awaitables (a job run, a store read): this project's own crossing against
pyo3-async-runtimes' `future_into_py`, for the design note in docs/design.md.

    python bench/oneshot.py            # 20,000 small awaits, 20 awaits of 2,000,000 ints
    python bench/oneshot.py --quick    # a smoke run

Both make the same result on a tokio runtime and hand it to the awaiting asyncio task; they
differ in how it crosses back: `ferrobatch` (src/task.rs) schedules one loop callback that
sets the result, converting a large result in steps of 65,536 values, one loop iteration each;
`pyo3-async-runtimes` converts it in one go. Reported: client CPU per await (small results,
awaited 64 at a time), and the event loop's largest stall while large results arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from _common import ticker

from ferrobatch import _native

VIAS = ("ferrobatch", "pyo3-async-runtimes")


async def small(via: str, n: int) -> float:
    sem = asyncio.Semaphore(64)

    async def one() -> None:
        async with sem:
            out = await _native._oneshot_probe(1, via)
            assert out == [0]

    c0 = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - c0) / n * 1e6


async def large(via: str, n: int, size: int) -> float:
    stop = asyncio.Event()
    worst = [0.0]
    tick = asyncio.ensure_future(ticker(stop, worst))
    await asyncio.sleep(0.01)
    worst[0] = 0.0
    for _ in range(n):
        out = await _native._oneshot_probe(size, via)
        assert len(out) == size and out[-1] == size - 1
    stop.set()
    await tick
    return worst[0] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--size", type=int, default=2_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.size, args.reps = 500, 100_000, 1
    cpu: dict[str, list[float]] = {v: [] for v in VIAS}
    stall: dict[str, list[float]] = {v: [] for v in VIAS}
    for _ in range(args.reps):
        for via in VIAS:
            cpu[via].append(asyncio.run(small(via, args.n)))
            stall[via].append(asyncio.run(large(via, 20 if not args.quick else 2, args.size)))
    print(
        f"One-shot awaitables: {args.n} small awaits (64 in flight); awaits of {args.size} ints "
        f"(Python {sys.version.split()[0]}; medians of {args.reps} runs)\n"
    )
    print("| crossing | CPU µs per small await | max loop stall ms, large results |")
    print("|---|---:|---:|")
    for via in VIAS:
        c, st = statistics.median(cpu[via]), statistics.median(stall[via])
        print(f"| {via} | {c:.1f} | {st:.1f} |")
    # pyo3-async-runtimes hands each result over from a runtime thread with
    # `call_soon_threadsafe`, and nothing keeps that thread out of Python at interpreter exit:
    # when the awaiting task resumes before the thread has left `call_soon_threadsafe`, and
    # the interpreter then finalizes, CPython ends that thread with `pthread_exit` and the
    # process aborts (about one run in ten here; docs/design.md). The project's own crossing
    # goes through the exit gate in src/exit.rs. End without finalizing, after the report.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
