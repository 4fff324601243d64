"""Embed a folder of files with Ray Data on a local cluster, through ferrobatch: one rate
limit in Redis for every actor, one cache in Redis, then run the pipeline again and see that
nothing is sent twice.

    python examples/ray_embed_folder.py     # pip install 'ferrobatch[ray]'; redis-server on PATH

The API is the shipped fake server; for a real one drop `base_url` and set OPENAI_API_KEY.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import ray
import ray.data

from ferrobatch.integrations.ray import Embed
from ferrobatch.testing import FakeServer
from ferrobatch.testing.redis import RedisServer


def write_folder(folder: Path, files: int, lines: int) -> None:
    for f in range(files):
        text = "\n".join(f"file {f}, paragraph {i}: batching saves money" for i in range(lines))
        (folder / f"doc{f}.txt").write_text(text + "\n")


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp, FakeServer() as api, RedisServer() as redis:
        folder = Path(tmp)
        write_folder(folder, files=20, lines=50)
        stage = {
            "model": "text-embedding-3-small",
            "base_url": api.openai_base_url,
            "dimensions": 64,
            "requests_per_minute": 3000,  # the whole cluster's budget, kept in Redis
            "redis_url": redis.url,
            "cache": redis.url,  # answers paid for, shared by every actor and every run
        }
        for run in (1, 2):
            api.clear_requests()
            ds = ray.data.read_text(str(folder)).map_batches(
                Embed,
                fn_constructor_kwargs=stage,
                compute=ray.data.ActorPoolStrategy(size=2),
                batch_size=100,
                num_cpus=0.5,
            )
            rows = ds.take_all()
            sent = sum(len(r["body"]["input"]) for r in api.requests("/embeddings"))
            failed = sum(r["error"] is not None for r in rows)
            print(f"run {run}: {len(rows)} rows embedded, {sent} texts sent, {failed} failed")
            assert len(rows) == 1000 and failed == 0
        assert sent == 0, "the second run was answered from the cache"
    ray.shutdown()


if __name__ == "__main__":
    main()
