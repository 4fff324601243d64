"""Index a folder of text files for retrieval: split, embed in batches, search.

Writes 80 small documents to a temporary folder, splits them into passages, embeds every
passage through `ferrobatch.openai.Embeddings` (against the fake server: the vectors are fake,
the batching is real) with a progress line, then answers a query by cosine similarity. With a
real key, drop the FakeServer and the base_url; with your own model, give `AsyncBatcher` your
batch function instead.

    python examples/rag_index.py
"""

import asyncio
import math
import tempfile
from pathlib import Path

from ferrobatch import metrics
from ferrobatch.openai import Embeddings
from ferrobatch.testing import FakeServer

TOPICS = ["rust", "python", "postgres", "redis", "batching", "tokens", "latency", "retries"]


def write_corpus(folder: Path) -> None:
    for i in range(80):
        topic = TOPICS[i % len(TOPICS)]
        text = "\n\n".join(f"Note {j} about {topic} in document {i}." for j in range(25))
        (folder / f"doc{i:02}.txt").write_text(text)


def passages(folder: Path, size: int = 200) -> list[tuple[str, str]]:
    """(source, passage) pairs: paragraphs packed into passages of about `size` characters."""
    out = []
    for path in sorted(folder.glob("*.txt")):
        chunk = ""
        for para in path.read_text().split("\n\n"):
            if chunk and len(chunk) + len(para) > size:
                out.append((path.name, chunk))
                chunk = ""
            chunk = f"{chunk} {para}".strip()
        if chunk:
            out.append((path.name, chunk))
    return out


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def main() -> None:
    with FakeServer(latency=0.02) as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_corpus(folder)
        docs = passages(folder)
        embedder = Embeddings(
            "text-embedding-3-small",
            base_url=server.openai_base_url,
            api_key="demo",
            dimensions=256,
            max_batch_size=128,  # texts per HTTP request
            concurrency=4,
        )
        metrics.track(embedder, name="indexer")

        # One await per passage; ferrobatch forms the requests. Progress as they finish.
        done = 0

        async def embed(text: str) -> list[float]:
            nonlocal done
            vector = await embedder.embed(text)
            done += 1
            if done % (len(docs) // 4) == 0 or done == len(docs):
                print(f"embedded {done}/{len(docs)} passages")
            return list(vector)

        vectors = await asyncio.gather(*[embed(text) for _, text in docs])
        stats = embedder.stats()
        print(f"{len(docs)} passages in {stats.batches} HTTP requests")

        query = await embedder.embed(docs[5][1])  # a passage's own text: it should come first
        ranked = sorted(range(len(docs)), key=lambda i: -cosine(list(query), vectors[i]))
        for i in ranked[:3]:
            print(f"{cosine(list(query), vectors[i]):.3f}  {docs[i][0]}: {docs[i][1][:60]}...")
        assert ranked[0] == 5
        await embedder.stop()


if __name__ == "__main__":
    asyncio.run(main())
