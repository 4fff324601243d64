"""One rate limit shared through a real Redis by three processes, against the fake server.

The server's request log is the ground truth. These runs take about three minutes in all: a
rate limit is only seen over its window.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import ferrobatch
from ferrobatch import RateLimiter
from ferrobatch.cli import main
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer
from ferrobatch.testing.redis import RedisServer

BENCH = Path(__file__).resolve().parent.parent / "bench" / "shared_limit.py"
RPM = 600.0
BURST = 5.0


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shared_limit", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answered(server: FakeServer) -> list[float]:
    """Arrival times (s) of the requests the server answered 200, from the first one."""
    at = sorted(r["at"] for r in server.requests("/chat/completions") if r["status"] == 200)
    return [t - at[0] for t in at]


def run_workers(
    redis: RedisServer, server: FakeServer, seconds: float, **kw: Any
) -> list[dict[str, Any]]:
    b = bench()
    procs = b.spawn_workers(3, redis.url, server.openai_base_url, seconds=seconds, **kw)
    reports: list[dict[str, Any]] = b.collect(procs, timeout=seconds + 120)
    for r in reports:
        assert r["failed"] == 0, r["errors"]
    return reports


def test_three_processes_share_one_requests_per_minute_limit(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with FakeServer(latency=0.005) as server:
        reports = run_workers(redis_server, server, 65, rpm=RPM, burst=BURST, name="rpm")
        times = answered(server)
    b = bench()
    worst = b.max_in_window(times, 60.0)
    bound = RPM + BURST * RPM / 60  # the limit plus the burst: 650
    assert worst <= bound, f"{worst} requests in one 60 s window (bound {bound})"
    last = [t for t in times if t >= times[-1] - 60]
    assert len(last) >= 0.9 * RPM, f"only {len(last)} requests in the last 60 s"
    assert [r["live"] for r in reports] == [3, 3, 3]
    assert not any(r["degraded"] for r in reports)


def test_three_processes_share_one_tokens_per_minute_limit(redis_server: RedisServer) -> None:
    with FakeServer(latency=0.005) as server:
        # What one request really costs (the server's usage), and what the client estimates.
        async def probe() -> int:
            chat = ChatCompletions("bench", base_url=server.openai_base_url, api_key="k")
            resp = await chat.create(messages=[{"role": "user", "content": "x" * 40}], max_tokens=8)
            await chat.stop()
            return int(resp["usage"]["total_tokens"])

        per_request = asyncio.run(probe())
        server.clear_requests()
        tpm = RPM * per_request  # ten requests a second, if the tokens are counted right
        run_workers(redis_server, server, 65, tpm=tpm, burst=BURST, name="tpm")
        times = answered(server)
    b = bench()
    tokens_worst = b.max_in_window(times, 60.0) * per_request
    # The limit plus the burst, plus one request's estimate error (settled after its answer).
    bound = tpm + BURST * tpm / 60 + 2 * per_request
    assert tokens_worst <= bound, f"{tokens_worst} tokens in one 60 s window (bound {bound})"
    last = [t for t in times if t >= times[-1] - 60]
    assert len(last) * per_request >= 0.9 * tpm, f"only {len(last)} requests in the last 60 s"


def test_a_429_seen_by_one_process_pauses_them_all(redis_server: RedisServer) -> None:
    with FakeServer(latency=0.005) as server:
        b = bench()
        procs = b.spawn_workers(
            3, redis_server.url, server.openai_base_url, seconds=14, rpm=RPM, burst=BURST, name="p"
        )
        time.sleep(7)  # past the burst: the processes are being paced
        server.fault("status", status=429, retry_after=2.0)
        reports = b.collect(procs, timeout=120)
        log = server.requests("/chat/completions")
    assert all(r["failed"] == 0 for r in reports), reports
    hit = next(r["at"] for r in log if r["status"] == 429)
    during = [r for r in log if hit + 0.1 < r["at"] < hit + 1.95]
    assert during == [], f"{len(during)} requests reached the server during the 2 s pause"
    after = [r["at"] for r in log if hit + 2.0 <= r["at"] < hit + 3.0]
    # Paced after the pause (about ten a second), not released as a burst.
    assert 1 <= len(after) <= 15, len(after)


def test_redis_down_falls_back_to_a_share_then_resumes(redis_server: RedisServer) -> None:
    t_server = time.monotonic()
    with FakeServer(latency=0.005) as server:
        b = bench()
        procs = b.spawn_workers(
            3, redis_server.url, server.openai_base_url, seconds=36, rpm=RPM, burst=BURST, name="d"
        )
        time.sleep(12)
        redis_server.stop()
        down = time.monotonic() - t_server
        time.sleep(10)
        redis_server.start()
        up = time.monotonic() - t_server
        reports = b.collect(procs, timeout=120)
        log = [r["at"] for r in server.requests("/chat/completions") if r["status"] == 200]
    # No request failed; each process warned once, and went back to Redis.
    assert all(r["failed"] == 0 for r in reports), [r["errors"] for r in reports]
    for r in reports:
        assert r["stderr"].count("limiting in this process to 1/3") == 1, r["stderr"]
        assert not r["degraded"] and r["live"] == 3
    # During the outage the three shares add up to the limit (plus each share's burst), not to
    # three limits; requests kept flowing.
    outage = [t for t in log if down + 0.5 < t < up - 0.5]
    seconds = up - down - 1.0
    bound = RPM / 60 * seconds + 3 * BURST * (RPM / 3) / 60
    assert 0.5 * RPM / 60 * seconds <= len(outage) <= bound, (len(outage), bound)
    # Afterwards the shared limit again: paced at the limit.
    after = [t for t in log if up + 2 < t < up + 12]
    assert len(after) <= RPM / 60 * 10 + BURST * RPM / 60, len(after)


def test_config_errors_and_the_fail_policy() -> None:
    with pytest.raises(ferrobatch.ConfigError, match="name"):
        RateLimiter(requests_per_minute=60, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ferrobatch.ConfigError, match="on_redis_error"):
        RateLimiter(60, redis_url="redis://127.0.0.1:1/0", name="x", on_redis_error="ignore")
    with pytest.raises(ferrobatch.ConfigError, match="burst"):
        RateLimiter(60, burst=0)
    lim = RateLimiter(
        60, redis_url="redis://:pw-secret@127.0.0.1:1/0", name="x", on_redis_error="fail"
    )
    assert "pw-secret" not in repr(lim) and lim.shared and lim.burst == 5.0

    async def send() -> None:
        with FakeServer() as server:
            chat = ChatCompletions("m", base_url=server.openai_base_url, rate_limiter=lim)
            with pytest.raises(ferrobatch.RateLimiterUnavailableError) as info:
                await chat.create(messages=[{"role": "user", "content": "hi"}])
            assert "pw-secret" not in str(info.value)
            assert server.request_count() == 0
            await chat.stop()

    asyncio.run(send())


def redis_cli(redis: RedisServer, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(redis.port), *args], capture_output=True, text=True, check=True
    ).stdout


def write_chat_file(path: Path, n: int) -> Path:
    lines = [
        {
            "custom_id": f"r{i}",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_one_round_trip_per_request_and_no_key_in_redis(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-very-secret-0123456789"
    src = write_chat_file(tmp_path / "in.jsonl", 40)
    monkeypatch.setenv("MY_KEY", secret)
    monkeypatch.setenv("FERROBATCH_REDIS", redis_server.url)
    with FakeServer() as server:
        args = ["run", str(src), "-o", str(tmp_path / "o"), "--base-url", server.openai_base_url]
        assert main([*args, "--api-key-env", "MY_KEY", "--rpm", "6000"]) == 0
        assert server.request_count() == 40
    stats = redis_cli(redis_server, "INFO", "commandstats")
    calls = {
        line.split(":")[0]: int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines()
        if line.startswith("cmdstat_")
    }
    # One script call per admitted request, and the script loaded once.
    assert calls.get("cmdstat_evalsha") == 40, stats
    assert calls.get("cmdstat_script|load") == 1, stats
    assert "cmdstat_eval" not in calls, stats
    keys = redis_cli(redis_server, "--scan").split()
    assert keys and all(k.startswith("ferrobatch:rl:{cli:") for k in keys), keys
    dump = "".join(keys) + "".join(
        redis_cli(redis_server, "ZRANGE", k, "0", "-1")
        if k.endswith(":live")
        else redis_cli(redis_server, "GET", k)
        for k in keys
    )
    assert secret not in dump


def test_the_cli_needs_a_limit_to_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_chat_file(tmp_path / "in.jsonl", 1)
    args = ["run", str(src), "-o", str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*args, "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "--rpm" in capsys.readouterr().err
