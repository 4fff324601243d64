"""Callers on threads: a thread pool where every task embeds ONE text, batched into a few
embeddings requests, with no asyncio anywhere.

The batch function is plain synchronous code (here `urllib` against the fake OpenAI-compatible
server that ships with ferrobatch; in your code, a model's forward pass or an SDK call). It runs
on a thread the batcher owns; callers block in `process_sync` with the GIL released.

Run with `python examples/threads.py` after `pip install .`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ferrobatch import AsyncBatcher
from ferrobatch.testing import FakeServer

with FakeServer(latency=0.02, dimensions=64) as server:  # 20 ms per request, like an API

    def embed(texts: list[str]) -> list[list[float]]:
        """One HTTP request for a whole batch of texts."""
        body = json.dumps({"model": "text-embedding-3-small", "input": texts}).encode()
        request = urllib.request.Request(
            f"{server.openai_base_url}/embeddings",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.load(response)["data"]
        return [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]

    batcher = AsyncBatcher(embed, max_batch_size=64, max_queue_time="auto", concurrency=2)

    def handle(i: int) -> int:
        """What a sync web handler or a worker task does: one text in, one vector out."""
        vector = batcher.process_sync(f"document {i}")
        return len(vector)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        sizes = list(pool.map(handle, range(2_000)))
    elapsed = time.perf_counter() - t0

    future = batcher.submit("one more")  # a concurrent.futures.Future, from any thread
    print(f"submit():       {len(future.result(timeout=10))} numbers")
    batcher.stop_sync()  # drain, from code with no event loop

    stats = batcher.stats()
    assert len(sizes) == 2_000 and stats.completed == 2_001
    print(f"2,000 calls from 64 threads in {elapsed:.2f} s -> {len(server.requests())} requests")
    print(f"mean batch:     {stats.completed / stats.batches:.1f} texts")
