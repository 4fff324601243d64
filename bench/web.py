"""A web service under real HTTP load: the FastAPI embeddings example with its requests
batched by ferrobatch, against the same app calling the model once per request.

    python bench/web.py                  # 3,000 requests at 64 and 256 concurrent
    python bench/web.py --quick          # a smoke run (used by the test suite)

Each mode runs as its own uvicorn process on 127.0.0.1; the load comes from aiohttp in this
process. Both share the machine's cores: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import fastapi_embeddings as app


def measure(mode: str, n: int, concurrency: int) -> tuple[float, float, float]:
    port = app.free_port()
    proc = app.start(port, mode)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(app.load(url, min(n, 200), concurrency))  # warm up
        latencies, wall, _ = asyncio.run(app.load(url, n, concurrency))
    finally:
        proc.terminate()
        proc.wait(10)
    return n / wall, app.pct(latencies, 0.5) * 1e3, app.pct(latencies, 0.99) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=3000)
    args = ap.parse_args()
    n = 300 if args.quick else args.n
    levels = [32] if args.quick else [64, 256]
    print(f"\n### {n} POST /embed requests, model: one call at a time, 2 ms + 20 µs a text\n")
    print("| concurrent | mode | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    ratios = []
    for c in levels:
        res = {mode: measure(mode, n, c) for mode in ("batched", "direct")}
        for mode, (rps, p50, p99) in res.items():
            print(f"| {c} | {mode} | {rps:,.0f} | {p50:.1f} | {p99:.1f} |")
        b, d = res["batched"], res["direct"]
        ratios.append((c, b[0] / d[0], d[1] / b[1], d[2] / b[2]))
    print("\n### batched / direct (req/s), direct / batched (p50, p99 latency)\n")
    print("| concurrent | req/s | p50 | p99 |")
    print("|---|---|---|---|")
    for c, rps, p50, p99 in ratios:
        print(f"| {c} | {rps:.2f}x | {p50:.2f}x | {p99:.2f}x |")


if __name__ == "__main__":
    main()
