"""Typing checks of the HTTP batchers' public API (mypy --strict; never run)."""

from __future__ import annotations

import sys
from typing import Any

import ferrobatch
from ferrobatch import RateLimiter
from ferrobatch.gemini import Embeddings as GeminiEmbeddings
from ferrobatch.openai import ChatCompletions, Embeddings
from ferrobatch.testing import FakeServer, LoggedRequest, fake_embedding

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover
    from typing_extensions import assert_type


async def use() -> None:
    limiter = RateLimiter(requests_per_minute=3000, tokens_per_minute=1_000_000)
    shared = RateLimiter(
        3000,
        redis_url="redis://127.0.0.1:6379/0",
        name="openai:emb",
        burst=5.0,
        on_redis_error="fail",
    )
    assert_type(shared.degraded, bool)
    assert_type(shared.live_processes, int)
    assert_type(shared.name, "str | None")
    with FakeServer(latency=0.02) as server:
        emb = Embeddings(
            "text-embedding-3-small",
            base_url=server.openai_base_url,
            api_key="k",
            rate_limiter=limiter,
            prices={"text-embedding-3-small": {"input": 0.02}},
        )
        vecs = await emb.embed_many(["a", "b"])
        assert_type(vecs, list[Any])
        assert_type(emb.usage()["text-embedding-3-small"]["cost"], float | None)
        chat = ChatCompletions("m", base_url=server.openai_base_url, concurrency=16)
        resp = await chat.create(messages=[{"role": "user", "content": "hi"}], temperature=0.2)
        assert_type(resp, dict[str, Any])
        g = GeminiEmbeddings(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768)
        await g.embed("x")
        server.fault("status", status=429, retry_after=0.1)
        log = server.requests("/v1/embeddings")
        assert_type(log, list[LoggedRequest])
        assert_type(fake_embedding("x", 8), list[float])
        try:
            await emb.embed("x")
        except ferrobatch.APIStatusError as e:
            assert_type(e.status, int)
        except ferrobatch.APIError as e:
            assert_type(e.status, int | None)
