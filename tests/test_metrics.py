"""`ferrobatch.metrics`: the series' names and values after a known workload, read back
through prometheus_client and the OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

import ferrobatch
from ferrobatch import metrics
from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions, Embeddings
from ferrobatch.testing import REJECT_MARKER, FakeServer
from ferrobatch.testing.plugin import unavailable


async def workload() -> ferrobatch.AsyncBatcher[int, int]:
    """10 items in batches of 4 (4, 4, 2); item 7 fails."""

    async def double(items: list[int]) -> list[Any]:
        await asyncio.sleep(0.01)
        return [ValueError("seven") if i == 7 else i * 2 for i in items]

    b = ferrobatch.AsyncBatcher(double, max_batch_size=4, max_queue_time=0.05)
    await asyncio.gather(*[b.process(i) for i in range(10)], return_exceptions=True)
    return b


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_prometheus_series_after_a_known_workload() -> None:
    b = await workload()
    metrics.track(b, name="doubler")
    registry = CollectorRegistry()
    metrics.enable_prometheus(registry)
    metrics.enable_prometheus(registry)  # once per registry
    try:
        assert value(registry, "ferrobatch_items_submitted_total", batcher="doubler") == 10
        finished = "ferrobatch_items_finished_total"
        assert value(registry, finished, batcher="doubler", outcome="completed") == 9
        assert value(registry, finished, batcher="doubler", outcome="failed") == 1
        assert value(registry, "ferrobatch_batches_total", batcher="doubler") == 3
        sizes = "ferrobatch_batch_size_bucket"
        assert value(registry, sizes, batcher="doubler", le="2.0") == 1
        assert value(registry, sizes, batcher="doubler", le="4.0") == 3
        assert value(registry, sizes, batcher="doubler", le="+Inf") == 3
        assert value(registry, "ferrobatch_batch_size_sum", batcher="doubler") == 10
        wait = "ferrobatch_queue_wait_seconds"
        assert value(registry, wait + "_count", batcher="doubler") == 10
        assert value(registry, wait + "_bucket", batcher="doubler", le="60.0") == 10
        assert value(registry, wait + "_bucket", batcher="doubler", le="0.0005") < 10
        dur = "ferrobatch_batch_duration_seconds"
        assert value(registry, dur + "_bucket", batcher="doubler", le="0.005") == 0  # slept 10 ms
        assert value(registry, dur + "_bucket", batcher="doubler", le="1.0") == 3
        assert 0.03 <= value(registry, dur + "_sum", batcher="doubler") < 1.0
        assert value(registry, "ferrobatch_queue_depth", batcher="doubler") == 0
        text = generate_latest(registry).decode()
        assert "# TYPE ferrobatch_queue_wait_seconds histogram" in text
    finally:
        metrics.untrack(b)
        await b.stop()
    assert value(registry, "ferrobatch_items_submitted_total", batcher="doubler") is None


async def test_http_and_job_series_name_the_model_never_the_key() -> None:
    with FakeServer(api_key="sk-secret-123") as server:
        emb = Embeddings(
            "text-embedding-3-small",
            base_url=server.openai_base_url,
            api_key="sk-secret-123",
            prices={"text-embedding-3-small": {"input": 0.02, "output": 0.0}},
            max_batch_size=8,
            initial_backoff=0.01,
        )
        server.fault("status", status=429, retry_after=0.01)
        await emb.embed_many([f"text {i}" for i in range(16)])
        with pytest.raises(ferrobatch.BadRequestError):
            await emb.embed(REJECT_MARKER)
        manager = JobManager(emb, JobStore())
        job = await manager.create_job(
            [JobRequest(id=f"r{i}", body={"input": "x"}) for i in range(5)]
        )
        await manager.wait(job.id)
        metrics.track(emb, name="embedder")
        metrics.track(manager, name="nightly")
        registry = CollectorRegistry()
        metrics.enable_prometheus(registry)
        try:
            m = {"batcher": "embedder", "model": "text-embedding-3-small"}
            # 2 batches of 8 texts, then the job's 5 requests through the same client.
            assert value(registry, "ferrobatch_http_requests_total", **m) == 7
            assert value(registry, "ferrobatch_http_retries_total", **m) == 1
            errors = "ferrobatch_http_error_responses_total"
            assert value(registry, errors, **m, status="429") == 1
            assert value(registry, errors, **m, status="400") == 1
            usage = emb.usage()["text-embedding-3-small"]
            tokens = value(registry, "ferrobatch_tokens_total", **m, direction="input")
            assert tokens == usage["input_tokens"] > 0
            assert value(registry, "ferrobatch_cost_usd_total", **m) == pytest.approx(usage["cost"])
            j = {"manager": "nightly", "job_id": job.id}
            assert value(registry, "ferrobatch_job_requests", **j, state="succeeded") == 5
            assert value(registry, "ferrobatch_job_requests", **j, state="pending") == 0
            text = generate_latest(registry).decode()
            assert "sk-secret" not in text and "127.0.0.1" not in text
        finally:
            metrics.untrack(emb)
            metrics.untrack(manager)
            await manager.close()
            await emb.stop()


async def test_opentelemetry_series_after_a_known_workload() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.enable_opentelemetry(provider)
    b = await workload()
    metrics.track(b, name="doubler")
    try:
        reader.collect()  # the first collection records the histograms' new values
        data = reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points[metric.name] = [
                        p
                        for p in metric.data.data_points
                        if p.attributes.get("batcher") == "doubler"
                    ]
        assert [p.value for p in points["ferrobatch.items.submitted"]] == [10]
        by_outcome = {p.attributes["outcome"]: p.value for p in points["ferrobatch.items.finished"]}
        assert (by_outcome["completed"], by_outcome["failed"]) == (9, 1)
        (size,) = points["ferrobatch.batch.size"]
        assert (size.count, size.sum) == (3, 10)
        (wait,) = points["ferrobatch.queue.wait"]
        assert wait.count == 10
        (dur,) = points["ferrobatch.batch.duration"]
        assert dur.count == 3
        assert [p.value for p in points["ferrobatch.queue.depth"]] == [0]
    finally:
        metrics.untrack(b)
        await b.stop()
        provider.shutdown()


async def test_tracking_is_weak_and_checks_its_argument() -> None:
    b = await workload()
    metrics.track(b)
    assert any(s.labels["batcher"].startswith("asyncbatcher_") for s in metrics.samples())
    await b.stop()
    del b
    gc.collect()
    assert not [s for s in metrics.samples() if s.labels.get("batcher", "").startswith("asyncb")]
    with pytest.raises(TypeError, match="track"):
        metrics.track(object())


async def test_a_managers_unfinished_jobs_show_before_it_runs_them() -> None:
    with FakeServer() as server:
        emb = Embeddings("m", base_url=server.openai_base_url, api_key="k")
        manager = JobManager(emb, JobStore())
        job = await manager.create_job(
            [JobRequest(id=f"r{i}", body={"input": "x"}) for i in range(4)], start=False
        )
        metrics.track(manager, name="queued")
        try:
            states = {
                s.labels["state"]: s.value
                for s in metrics.samples()
                if s.name == "ferrobatch_job_requests" and s.labels["job_id"] == job.id
            }
            assert states == {
                "pending": 4,
                "running": 0,
                "succeeded": 0,
                "failed": 0,
                "cancelled": 0,
            }
        finally:
            metrics.untrack(manager)
            await manager.close()
            await emb.stop()


def documented(text: str) -> dict[str, set[str]]:
    """Series name -> label names, from a markdown table whose rows start with backticked
    series names (`_x` after a full name abbreviates one sharing its first two words)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`ferrobatch_"):
            continue
        names = re.findall(r"`([\w]+)`", cells[0])
        prefix = "_".join(names[0].split("_")[:2])
        labels = {x.strip() for x in re.sub(r"\(.*?\)", "", cells[2]).split(",")}
        for n in names:
            out[prefix + n if n.startswith("_") else n] = labels
    return out


async def exposition() -> str:
    """The Prometheus text of a workload that produces every series."""
    registry = CollectorRegistry()
    metrics.enable_prometheus(registry)
    b = await workload()
    cache = ferrobatch.Cache("memory")
    with FakeServer() as server:
        emb = Embeddings(
            "e",
            base_url=server.openai_base_url,
            api_key="k",
            prices={"e": {"input": 0.02, "output": 0.0}},
            initial_backoff=0.01,
            cache=cache,
        )
        server.fault("status", status=429, retry_after=0.01)
        await emb.embed_many(["a", "b"])
        await emb.embed_many(["a", "b"])  # answered from the cache
        with pytest.raises(ferrobatch.BadRequestError):
            await emb.embed(REJECT_MARKER)
        manager = JobManager(emb, JobStore())
        job = await manager.create_job([JobRequest(id="r", body={"input": "x"})])
        await manager.wait(job.id)
        chat = ChatCompletions("c", base_url=server.openai_base_url, api_key="k")
        async with chat.stream(messages=[{"role": "user", "content": "a few words"}]) as s:
            assert [c async for c in s]
        tracked = (
            (b, "doubler"),
            (emb, "embedder"),
            (manager, "nightly"),
            (cache, "vectors"),
            (chat, "talker"),
        )
        for obj, name in tracked:
            metrics.track(obj, name=name)
        try:
            return generate_latest(registry).decode()
        finally:
            for obj, _ in tracked:
                metrics.untrack(obj)
            await manager.close()
            await emb.stop()
            await chat.stop()
            await b.stop()


def exported(text: str) -> dict[str, set[str]]:
    """Series name (as documented: counters with `_total`) -> label names, from an
    exposition."""
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    out: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):
        if name.endswith("_created"):
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        series = base if types.get(base) == "histogram" else name
        keys = {k for k in re.findall(r"(\w+)=", labels) if k != "le"}
        out.setdefault(series, set()).update(keys)
    return out


async def test_the_documented_series_and_labels_are_what_is_exported() -> None:
    text = await exposition()
    have = exported(text)
    guide = Path(__file__).parent.parent / "docs" / "guides" / "metrics.md"
    readme = documented(guide.read_text())
    module = documented(metrics.__doc__ or "")
    assert readme == module, "the metrics guide and ferrobatch.metrics document the same series"
    assert {k: v for k, v in have.items() if k.startswith("ferrobatch_")} == readme
    for series, labels in have.items():
        assert not labels & {"job", "instance"}, f"{series} uses a label Prometheus owns"


async def test_queue_wait_buckets_hug_the_window() -> None:
    text = await exposition()  # the workload's window is 50 ms
    bounds = re.findall(
        r'ferrobatch_queue_wait_seconds_bucket\{batcher="doubler",le="([^"]+)"', text
    )
    for want in ("0.05", "0.055", "0.0625", "0.1"):
        assert want in bounds, bounds


async def test_promtool_finds_nothing_to_lint() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable(RuntimeError("promtool not found: install the Debian package prometheus"))
        return
    text = await exposition()
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


async def test_cache_series_count_hits_and_what_they_saved() -> None:
    text = await exposition()
    assert 'ferrobatch_cache_lookups_total{cache="vectors",result="hit"} 2.0' in text
    assert 'ferrobatch_cached_requests_total{batcher="embedder",model="e"} 2.0' in text
    saved = re.search(
        r'^ferrobatch_saved_cost_usd_total\{batcher="embedder",model="e"\} (\S+)$', text, re.M
    )
    assert saved is not None and float(saved.group(1)) > 0


async def test_stream_series_count_streams_and_their_first_chunk() -> None:
    text = await exposition()
    assert 'ferrobatch_streams_total{batcher="talker",outcome="completed"} 1.0' in text
    assert 'ferrobatch_stream_first_chunk_seconds_count{batcher="talker"} 1.0' in text
    tokens = re.search(r'^ferrobatch_streamed_tokens_total\{batcher="talker"\} (\S+)$', text, re.M)
    assert tokens is not None and float(tokens.group(1)) > 0
