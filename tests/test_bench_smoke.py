"""The benchmarks must keep running: smoke runs with small N (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferrobatch.testing.plugin import unavailable

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_quick(script: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_core_benchmark_smoke_run() -> None:
    text = run_quick("core.py")
    for section in ("Throughput", "divided by", "Low load", "Memory"):
        assert section in text, text
    assert "| ferrobatch " in text and "| asyncio floor " in text


def test_threads_benchmark_smoke_run() -> None:
    text = run_quick("threads.py")
    assert '| ferrobatch (max_queue_time="auto") ' in text, text
    assert "| queue + thread DataLoader (1 ms) " in text and "| batched " in text
    assert "divided by each contender's" in text


def test_adaptive_benchmark_smoke_run() -> None:
    text = run_quick("adaptive.py")
    assert "auto p99 / best fixed p99" in text, text
    assert "| auto: p50 / p99 ms, items/s" in text


def test_embeddings_benchmark_smoke_run() -> None:
    text = run_quick("embeddings.py")
    assert "| ferrobatch Embeddings | " in text, text
    assert "SDK CPU / ferrobatch CPU" in text


def test_jobs_benchmark_smoke_run() -> None:
    text = run_quick("jobs.py")
    assert "| job, SQLite file store | " in text and "throughput / online" in text, text


def test_shared_limit_benchmark_smoke_run(redis_server: object) -> None:
    # The fixture only makes a missing redis-server skip (or fail under CI); the benchmark
    # starts its own.
    text = run_quick("shared_limit.py")
    assert "| 3 | one bucket in Redis |" in text and "Redis calls per request" in text, text


def test_web_benchmark_smoke_run() -> None:
    text = run_quick("web.py")
    assert "| 32 | batched |" in text and "| 32 | direct |" in text, text
    assert "batched / direct" in text


def test_chat_benchmark_smoke_run() -> None:
    text = run_quick("chat.py")
    assert "| ferrobatch ChatCompletions " in text, text
    assert "| openai SDK AsyncOpenAI" in text and "CPU ratio" in text


def test_oneshot_benchmark_smoke_run() -> None:
    text = run_quick("oneshot.py")
    assert "| ferrobatch |" in text and "| pyo3-async-runtimes |" in text, text


def test_reindex_benchmark_smoke_run() -> None:
    text = run_quick("reindex.py")
    first = "| ferrobatch Embeddings + Cache (SQLite file) | first | 300 |"
    second = "| ferrobatch Embeddings + Cache (SQLite file) | second | 30 |"
    assert first in text and second in text, text  # the second pass sends the edited 10%
    assert "All hits (memory cache)" in text


def test_stream_benchmark_smoke_run() -> None:
    text = run_quick("stream.py")
    assert "| ferrobatch ChatCompletions.stream |" in text, text
    assert "CPU ratio per chunk" in text and "Stalled consumer" in text


def test_ray_benchmark_smoke_run(redis_server: object) -> None:
    # The fixture makes a missing redis-server skip (or fail under CI), as for Ray below.
    try:
        import ray  # noqa: F401
    except ImportError as e:
        unavailable(RuntimeError(f"Ray is not installed (pip install 'ferrobatch[ray]'): {e}"))
    text = run_quick("ray_embed.py")
    assert "| ferrobatch Embed (Redis limit) |" in text, text
    assert "| ray.data.llm HTTP processor, qps split over actors |" in text
