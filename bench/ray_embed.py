"""An embedding pipeline on a local Ray cluster under one provider rate limit: ferrobatch's
`Embed` stage against Ray Data's own HTTP request processor (`ray.data.llm`).

    python bench/ray_embed.py            # 20,000 rows, 4 actors, a server allowing 120 requests/min
    python bench/ray_embed.py --quick    # a smoke run (used by the test suite)

The fake server answers 429 (with `retry-after-ms`) above its requests-per-minute limit, as
providers do. Both contenders send 100 texts per request (Ray's processor sends one request
per row, so rows are first grouped 100 to a row: what a user of it does to batch), from
`--actors` actors:

- ferrobatch `Embed`, the cluster's budget in one Redis limiter set to the server's limit;
- `ray.data.llm` `HttpRequestProcessorConfig`, `max_retries=5`, with `qps` (which Ray paces
  per actor, from the start of each batch) either the limit split over the actors (a
  careful user's setting) or the limit itself (the documented knob read as the budget).

Reported: rows/s, requests sent (a block Ray splits makes more, smaller requests), 429s the
server answered, rows failed, and CPU seconds of the driver and every Ray worker process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import metadata
from typing import Any

import ray
import ray.data

from ferrobatch.integrations.ray import Embed
from ferrobatch.testing import FakeServer
from ferrobatch.testing.redis import RedisServer

GROUP = 100
DIMS = 64


def ray_cpu_seconds() -> float:
    """CPU seconds of this process and every Ray worker process now."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            if int(entry) != os.getpid() and b"ray::" not in cmd and b"default_worker" not in cmd:
                continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_ferrobatch(api: FakeServer, redis_url: str, rows: int, actors: int, rpm: float) -> int:
    ds = ray.data.from_items([{"text": f"row {i} of the corpus"} for i in range(rows)])
    out = ds.map_batches(
        Embed,
        fn_constructor_kwargs={
            "base_url": api.openai_base_url,
            "dimensions": DIMS,
            "max_batch_size": GROUP,
            "requests_per_minute": rpm,
            "burst": 1.0,
            "redis_url": redis_url,
            "limit_name": f"bench-{time.monotonic_ns()}",
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=GROUP,
        num_cpus=0.25,
    )
    return sum(r["error"] is not None for r in out.select_columns(["error"]).iter_rows())


def run_ray_http(api: FakeServer, rows: int, actors: int, rpm: float, split: bool) -> int:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=f"{api.openai_base_url}/embeddings",
        headers={"Authorization": "Bearer bench"},
        qps=max(1, int(rpm / 60 / actors)) if split else max(1, int(rpm / 60)),
        max_retries=5,
        base_retry_wait_time_in_s=1,
        batch_size=4,
        concurrency=actors,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "payload": {
                "model": "text-embedding-3-small",
                "input": list(row["texts"]),
                "dimensions": DIMS,
                "encoding_format": "float",
            }
        },
        postprocess=lambda row: {"n": len((row.get("http_response") or {}).get("data") or [])},
    )
    ds = ray.data.from_items([{"text": f"row {i} of the corpus"} for i in range(rows)])
    grouped = ds.map_batches(lambda b: {"texts": [list(b["text"])]}, batch_size=GROUP)
    embedded = 0
    try:
        for r in processor(grouped).iter_rows():
            embedded += int(r["n"])
    except Exception as e:  # a block that exhausted its retries fails the whole pipeline
        print(f"  ray.data.llm pipeline failed: {type(e).__name__}: {str(e)[:160]}")
        return -1
    return rows - embedded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--actors", type=int, default=4)
    p.add_argument("--rpm", type=float, default=120.0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rows, args.rpm = 2_048, 600.0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict[str, dict[str, Any]] = {}
    with RedisServer() as redis:
        for name in (
            "ferrobatch Embed (Redis limit)",
            "ray.data.llm HTTP processor, qps split over actors",
            "ray.data.llm HTTP processor, qps = the limit (per actor)",
        ):
            with FakeServer(dimensions=DIMS, requests_per_minute=int(args.rpm)) as api:
                c0, t0 = ray_cpu_seconds(), time.perf_counter()
                if name.startswith("ferrobatch"):
                    failed = run_ferrobatch(api, redis.url, args.rows, args.actors, args.rpm)
                else:
                    split = "split" in name
                    failed = run_ray_http(api, args.rows, args.actors, args.rpm, split)
                wall, cpu = time.perf_counter() - t0, ray_cpu_seconds() - c0
                log = api.requests("/embeddings")
                results[name] = {
                    "rows/s": args.rows / wall,
                    "429s": sum(r["status"] == 429 for r in log),
                    "requests": len(log),
                    "failed": "pipeline failed" if failed < 0 else failed,
                    "cpu": cpu,
                    "wall": wall,
                }
    ray.shutdown()
    print(
        f"Ray Data embedding pipeline: {args.rows} rows, {GROUP} texts a request, {args.actors} "
        f"actors, the server allowing {args.rpm:.0f} requests/min (429 above it); "
        f"ray {metadata.version('ray')}, Python {sys.version.split()[0]}\n"
    )
    print("| contender | rows/s | wall s | requests sent | 429s received | rows failed | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rows/s']:.0f} | {r['wall']:.1f} | {r['requests']} | {r['429s']} "
            f"| {r['failed']} | {r['cpu']:.1f} |"
        )


if __name__ == "__main__":
    main()
