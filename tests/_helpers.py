"""Helpers shared by the tests (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ferrobatch.openai import Embeddings
from ferrobatch.testing import FakeServer

#: The key and vector length the embeddings tests use.
KEY = "sk-test-0123456789abcdef"
DIMS = 8


def close(a: object, b: list[float]) -> bool:
    """Whether `a` is a list of floats equal to `b` up to float32 rounding."""
    return isinstance(a, list) and len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def embeddings(server: FakeServer, **kw: object) -> Embeddings:
    """An `Embeddings` batcher on `server` with fast retries; `kw` overrides."""
    opts: dict[str, object] = {
        "base_url": server.openai_base_url,
        "api_key": KEY,
        "dimensions": DIMS,
        "initial_backoff": 0.01,
        "max_backoff": 0.05,
    }
    opts.update(kw)
    return Embeddings(**opts)  # type: ignore[arg-type]


class Recorder:
    """A batch function that records every batch it is called with."""

    def __init__(self, delay: float = 0.0, fail_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.running = 0
        self.max_running = 0

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in batch:
                raise RuntimeError(f"boom on {self.fail_on}")
            return [x * 2 for x in batch]
        finally:
            self.running -= 1

    @property
    def seen(self) -> list[Any]:
        return [x for b in self.batches for x in b]


def chat_jsonl(path: Path, n: int) -> None:
    """An OpenAI Batch API input file of `n` chat requests (`custom_id` c0.., content
    `item 0`..)."""
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"item {i}"}]}
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")


def cli(*args: str) -> list[str]:
    """The `ferrobatch` command line with `args`, run by this interpreter."""
    return [sys.executable, "-m", "ferrobatch.cli", *args]
