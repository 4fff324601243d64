"""ferrobatch inside Ray Data: a local Ray cluster started here (no outside address), a
throwaway Redis and the fake server. Four actors keep one requests-per-minute budget; a bad
row lands in the error column; an actor SIGKILLed mid-run is retried by Ray, and with a
shared cache no row is paid twice beyond what was in flight; a rerun sends nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ferrobatch.testing import REJECT_MARKER, FakeServer
from ferrobatch.testing.plugin import unavailable
from ferrobatch.testing.redis import RedisServer

try:
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - CI installs it
    ray = None
    RAY_MISSING: Exception | None = RuntimeError(
        f"Ray is not installed (pip install 'ferrobatch[ray]'): {e}"
    )
else:
    RAY_MISSING = None

from ferrobatch.integrations.ray import Chat, Embed, usage_totals

# Ray's own deprecation notices (about its settings, not this project's use) are not errors.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:ray", "ignore::FutureWarning:ray"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if ray is None:
        unavailable(RAY_MISSING or RuntimeError("Ray is not installed"))
        return
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def rows(n: int, column: str = "prompt") -> Any:
    return ray.data.from_items([{column: f"row {i}"} for i in range(n)])


def windows(times: list[float], width: float) -> int:
    """The most requests in any `width`-second window."""
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - width:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


def test_four_actors_keep_one_budget(
    cluster: None, fake_ai_server: FakeServer, redis_server: RedisServer
) -> None:
    rpm, burst, n = 1200.0, 1.0, 160  # 20 requests a second, a burst of one second's worth
    out = (
        rows(n)
        .map_batches(
            Chat,
            fn_constructor_kwargs={
                "model": "m",
                "base_url": fake_ai_server.openai_base_url,
                "requests_per_minute": rpm,
                "burst": burst,
                "redis_url": redis_server.url,
                "limit_name": "ray-test-budget",
            },
            compute=ray.data.ActorPoolStrategy(size=4),
            batch_size=10,
            num_cpus=0.25,
        )
        .take_all()
    )
    assert len(out) == n and all(r["error"] is None for r in out)
    assert {r["response"] for r in out} == {f"fake reply to: row {i}" for i in range(n)}
    times = [r["at"] for r in fake_ai_server.requests("/chat/completions")]
    assert len(times) == n
    rate = rpm / 60
    assert windows(times, 1.0) <= rate * 1.0 + rate * burst + 1
    # Utilisation: after the first burst, requests go out at the budget's pace.
    span = max(times) - min(times)
    assert (n - rate * burst) / (span * rate) >= 0.9, f"{n} requests over {span:.2f} s"


def test_a_bad_row_lands_in_the_error_column(cluster: None, fake_ai_server: FakeServer) -> None:
    items = [{"text": f"text {i}"} for i in range(20)]
    items[7]["text"] = f"bad {REJECT_MARKER}"
    kwargs = {"base_url": fake_ai_server.openai_base_url, "dimensions": 8}
    out = (
        ray.data.from_items(items)
        .map_batches(
            Embed,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=20,
        )
        .take_all()
    )
    by_text = {r["text"]: r for r in out}
    bad = by_text[f"bad {REJECT_MARKER}"]
    assert bad["embedding"] is None and bad["error"].startswith("BadRequestError: ")
    good = [r for r in out if r is not bad]
    assert len(good) == 19 and all(len(r["embedding"]) == 8 and r["error"] is None for r in good)
    with pytest.raises(Exception, match=r"BadRequestError|rejected"):
        ray.data.from_items(items).map_batches(
            Embed,
            fn_constructor_kwargs={**kwargs, "on_error": "raise"},
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=20,
        ).take_all()


def actor_pids(stage: str) -> list[int]:
    """Ray names an actor's process after its operator (`ray::MapWorker(MapBatches(Chat))`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if f"MapBatches({stage})" in cmdline and "MapWorker" in cmdline:
            pids.append(int(entry))
    return pids


def test_a_killed_actor_is_retried_and_the_cache_pays_nothing_twice(
    cluster: None, fake_ai_server: FakeServer, redis_server: RedisServer, tmp_path: Any
) -> None:
    n = 400
    kwargs = {
        "model": "m",
        "base_url": fake_ai_server.openai_base_url,
        "cache": f"{redis_server.url.rsplit('/', 1)[0]}/3",
        "cache_namespace": f"ray-kill-{time.monotonic_ns()}",
        "concurrency": 4,
    }
    fake_ai_server.latency = 0.02
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(fake_ai_server.requests("/chat/completions")) >= n // 4:
                pids = actor_pids("Chat")
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one)
    killer.start()
    out = (
        rows(n)
        .map_batches(
            Chat,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=2),
            batch_size=20,
            num_cpus=0.5,
        )
        .take_all()
    )
    killer.join()
    fake_ai_server.latency = 0.0
    assert killed, "no actor was killed"
    assert sorted(r["prompt"] for r in out) == sorted(f"row {i}" for i in range(n))
    assert all(r["error"] is None for r in out)
    sent = [
        r["body"]["messages"][0]["content"] for r in fake_ai_server.requests("/chat/completions")
    ]
    repeats = len(sent) - len(set(sent))
    # Only what the killed actor had in flight (its concurrency) can be paid twice.
    assert repeats <= kwargs["concurrency"], f"{repeats} rows sent twice"
    assert len(set(sent)) == n
    # A rerun: every answer is cached, nothing is sent.
    fake_ai_server.clear_requests()
    again = (
        rows(n)
        .map_batches(
            Chat,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=2),
            batch_size=50,
            num_cpus=0.5,
        )
        .materialize()
    )
    assert fake_ai_server.requests("/chat/completions") == []
    totals = usage_totals(again, prices={"m": {"input": 1.0, "output": 2.0}})
    assert totals["rows"] == n and totals["failed_rows"] == 0
    assert totals["input_tokens"] > 0 and totals["cost"] > 0
