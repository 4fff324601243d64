"""One rate limit shared through Redis by 1 and 3 processes: achieved rate against the limit,
and the same 3 processes each holding its own in-process limiter (what Redis replaces).

    python bench/shared_limit.py              # 1, 3 and 3 unshared processes, 70 s each
    python bench/shared_limit.py --plot       # also writes bench/results/shared_limit.png
    python bench/shared_limit.py --quick      # a smoke run (8 s each)

Each process sends chat requests to the fake server (in this process, on 127.0.0.1) through
`ChatCompletions` with a `RateLimiter(redis_url=..., name=...)`, keeping many requests waiting
on the limiter. The server's request log is the ground truth: the table gives the largest count
in any 60 s window (the bound is limit + burst) and the utilization of the last 60 s (the count
in them divided by the limit). Needs redis-server (Debian package redis-server).

`--worker` is the per-process part; the tests use it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from bisect import bisect_left

HERE = os.path.dirname(os.path.abspath(__file__))


async def worker(args: argparse.Namespace) -> None:
    """Send requests until the deadline with `--in-flight` waiting on the limiter; print
    {"ok", "failed", "errors", "degraded", "live"} as JSON."""
    from ferrobatch import RateLimiter
    from ferrobatch.openai import ChatCompletions

    limiter = RateLimiter(
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        redis_url=args.redis,
        name=args.name,
        burst=args.burst,
    )
    chat = ChatCompletions(
        "bench",
        base_url=args.base_url,
        api_key="k",
        concurrency=args.in_flight,
        rate_limiter=limiter,
        max_retries=5,
        initial_backoff=0.05,
    )
    deadline = time.monotonic() + args.seconds
    ok = failed = 0
    errors: list[str] = []

    async def one_loop() -> None:
        nonlocal ok, failed
        while time.monotonic() < deadline:
            try:
                await chat.create(messages=[{"role": "user", "content": "x" * 40}], max_tokens=8)
                ok += 1
            except Exception as e:  # every failure is counted and reported
                failed += 1
                errors.append(repr(e)[:200])

    await asyncio.gather(*(one_loop() for _ in range(args.in_flight)))
    await chat.stop()
    report = {
        "ok": ok,
        "failed": failed,
        "errors": errors[:5],
        "degraded": limiter.degraded,
        "live": limiter.live_processes,
    }
    print(json.dumps(report), flush=True)


def spawn_workers(
    n: int, redis_url: str | None, base_url: str, **kw: object
) -> list[subprocess.Popen[str]]:
    """`n` worker processes sharing one bucket (each with its own limit without `redis_url`)."""
    cmd = [sys.executable, os.path.join(HERE, "shared_limit.py"), "--worker"]
    cmd += ["--base-url", base_url] + (["--redis", redis_url] if redis_url else [])
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]


def collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, object]]:
    """Each worker's report, with what it logged under "stderr"."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"a worker exited with {p.returncode}: {stderr[-2000:]}"
        report = json.loads(stdout.strip().splitlines()[-1])
        report["stderr"] = stderr
        out.append(report)
    return out


def redis_script_calls(port: int) -> int:
    """How many times Redis ran the limiter's script (`INFO commandstats`)."""
    stats = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(
        int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines()
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))
    )


def max_in_window(times: list[float], width: float) -> int:
    """The largest number of `times` (sorted) in any window of `width` seconds."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect_left(times, t + width) - i)
    return best


def run(procs: int, seconds: float, rpm: float, burst: float, shared: bool) -> dict[str, object]:
    from ferrobatch.testing import FakeServer
    from ferrobatch.testing.redis import RedisServer

    with RedisServer() as redis, FakeServer(latency=0.005) as server:
        started = time.monotonic()
        ws = spawn_workers(
            procs,
            redis.url if shared else None,
            server.openai_base_url,
            rpm=rpm,
            name=f"bench-{procs}",
            burst=burst,
            seconds=seconds,
        )
        results = collect(ws, timeout=seconds + 60)
        script_calls = redis_script_calls(redis.port)
        at = sorted(r["at"] for r in server.requests("/chat/completions") if r["status"] == 200)
    t0 = at[0] if at else 0.0
    rel = [t - t0 for t in at]
    window = min(60.0, seconds)
    last = [t for t in rel if t >= rel[-1] - window] if rel else []
    return {
        "procs": procs,
        "how": "one bucket in Redis" if shared else "a limiter per process",
        "ok": sum(int(r["ok"]) for r in results),  # type: ignore[call-overload]
        "failed": sum(int(r["failed"]) for r in results),  # type: ignore[call-overload]
        "max_window": max_in_window(rel, window),
        "calls_per_request": script_calls / max(1, len(at)) if shared else None,
        "bound": rpm * window / 60 + burst * rpm / 60,
        "utilization": len(last) / (rpm * window / 60),
        "times": rel,
        "wall": time.monotonic() - started,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis")
    ap.add_argument("--base-url")
    ap.add_argument("--name", default="bench")
    ap.add_argument("--rpm", type=float, default=600.0)
    ap.add_argument("--tpm", type=float, default=None)
    ap.add_argument("--burst", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=70.0)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    seconds = 8.0 if args.quick else args.seconds
    rows = [
        run(n, seconds, args.rpm, args.burst, shared)
        for n, shared in ((1, True), (3, True), (3, False))
    ]
    window = min(60.0, seconds)
    print(f"# limit {args.rpm:.0f} requests/min, burst {args.burst} s, {seconds:.0f} s per run")
    print(
        f"| processes | limit held by | ok | failed | max in any {window:.0f} s window "
        f"| bound (limit + burst) | achieved / limit, last {window:.0f} s "
        "| Redis calls per request |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpr = r["calls_per_request"]
        calls = "-" if cpr is None else f"{cpr:.2f}"
        print(
            f"| {r['procs']} | {r['how']} | {r['ok']} | {r['failed']} | {r['max_window']} | "
            f"{r['bound']:.0f} | {r['utilization']:.2f} | {calls} |"
        )
    if args.plot:
        plot(rows, args.rpm)


def plot(rows: list[dict[str, object]], rpm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for r in rows:
        times: list[float] = r["times"]  # type: ignore[assignment]
        secs = [int(t) for t in times]
        per_sec = [secs.count(s) for s in range(max(secs) + 1)] if secs else []
        label = f"{r['procs']} process(es), {r['how']}"
        ax.plot(range(len(per_sec)), [x * 60 for x in per_sec], label=label)
    ax.axhline(rpm, color="k", linestyle="--", label="limit")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/min (per-second rate x 60)")
    ax.legend()
    out = os.path.join(HERE, "results", "shared_limit.png")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
