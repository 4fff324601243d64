"""Re-index a folder with a result cache: the second run pays only for what changed.

Writes 40 small documents to a temporary folder and embeds every paragraph through
`ferrobatch.openai.Embeddings` with a `Cache` in a SQLite file (against the fake server: the
vectors are fake, the cache is real). Then it edits 10% of the paragraphs and indexes the
folder again: only the edited paragraphs are sent. With a real key, drop the FakeServer and
the base_url; with Redis, give `Cache("redis://...")` and every process and host shares it.

    python examples/reindex_cached.py
"""

import asyncio
import tempfile
from pathlib import Path

from ferrobatch import Cache
from ferrobatch.openai import Embeddings
from ferrobatch.testing import FakeServer

PRICES = {"text-embedding-3-small": {"input": 0.02}}  # USD per 1M tokens


def paragraphs(folder: Path) -> list[str]:
    return [p for f in sorted(folder.glob("*.txt")) for p in f.read_text().split("\n\n")]


async def index(folder: Path, cache: Cache, base_url: str) -> dict:
    emb = Embeddings(base_url=base_url, api_key="test", cache=cache, prices=PRICES)
    vectors = await emb.embed_many(paragraphs(folder))
    await emb.stop()
    assert len(vectors) == len(paragraphs(folder))
    return emb.usage()["text-embedding-3-small"]


async def main() -> None:
    with FakeServer() as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for i in range(40):
            text = "\n\n".join(f"Paragraph {j} of document {i} about caching." for j in range(10))
            (folder / f"doc{i:02}.txt").write_text(text)
        cache = Cache(f"sqlite:///{Path(tmp) / 'embeddings-cache.db'}")

        first = await index(folder, cache, server.openai_base_url)
        sent_first = server.request_count()

        for i in range(0, 40, 10):  # edit 10% of the paragraphs (4 documents)
            path = folder / f"doc{i:02}.txt"
            path.write_text(path.read_text().replace("caching", "edited caching"))
        second = await index(folder, cache, server.openai_base_url)

        print(f"first run:  {first['input_tokens']} tokens sent, cost ${first['cost']:.6f}")
        print(
            f"second run: {second['input_tokens']} tokens sent, cost ${second['cost']:.6f}; "
            f"{second['cached_requests']} paragraphs from the cache, "
            f"${second['saved_cost']:.6f} saved"
        )
        print(f"HTTP requests: {sent_first} then {server.request_count() - sent_first}")
        assert second["cached_requests"] == 360  # 400 paragraphs, 40 edited


asyncio.run(main())
