"""`examples/fastapi_embeddings.py` under uvicorn on 127.0.0.1, loaded by a real HTTP client:
every response right, batches actually formed, and `/metrics` reporting them."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ferrobatch.testing import fake_embedding

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import fastapi_embeddings as example


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_thousands_of_concurrent_requests_share_batches_and_metrics_show_them() -> None:
    n = 3000
    port = example.free_port()
    proc = example.start(port, "batched")
    try:
        url = f"http://127.0.0.1:{port}"
        latencies, _, bodies = asyncio.run(example.load(url, n, concurrency=200))
        assert len(latencies) == n
        for i in (0, 1, 1234, n - 1):
            assert bodies[i]["embedding"] == fake_embedding(f"document {i}", example.DIMENSIONS)
        assert all(len(b["embedding"]) == example.DIMENSIONS for b in bodies)
        m = scrape(url)
        label = (("batcher", "embed"),)
        assert m[("ferrobatch_items_submitted_total", label)] == n
        done = m[
            ("ferrobatch_items_finished_total", (("batcher", "embed"), ("outcome", "completed")))
        ]
        assert done == n
        batches = m[("ferrobatch_batches_total", label)]
        assert m[("ferrobatch_batch_size_sum", label)] == n
        assert m[("ferrobatch_batch_size_count", label)] == batches
        # 200 requests in flight against a model that takes one call at a time: they share.
        assert batches < n / 4, f"{batches} batches for {n} requests"
        wait_count = m[("ferrobatch_queue_wait_seconds_count", label)]
        assert wait_count == n
    finally:
        proc.terminate()
        proc.wait(10)
