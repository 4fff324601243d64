"""Re-indexing through a result cache: a corpus embedded, 10% of it edited, embedded again.

    python bench/reindex.py            # 10,000 texts, 20 ms server latency, 3 repetitions
    python bench/reindex.py --quick    # a smoke run (used by the test suite)

Each contender runs each pass in a fresh process of its own (a re-index is a new run of a
job), with a cache in a fresh temporary folder; the fake server runs in this process and
counts what reached it. Contenders (those not installed are listed as such):

- ferrobatch `Embeddings(cache=Cache("cache.db"))` (a SQLite file), `embed_many(texts)`;
- LangChain `CacheBackedEmbeddings` over `OpenAIEmbeddings` with a `LocalFileStore` (one file
  per vector), `aembed_documents(texts)` (`pip install langchain-classic langchain-openai`);
- LiteLLM `aembedding(..., caching=True)`, batches of 256, 8 at a time, with its Redis cache
  (its persistent store: LiteLLM 1.110 has no disk cache any more), beside ferrobatch with
  `Cache("redis://...")` on the same throwaway Redis (`pip install litellm redis`; a
  `redis-server` on PATH).

Reported per pass: texts and requests the server received, estimated tokens and cost of
those texts (a token per 4 characters, at $0.02 per million), wall time and client CPU time
(the contender's process). Every vector of both passes is checked against the fake server's
own embedding of its text: a cache that hands a text another text's vector fails the run.

Then the overhead of an all-hits memory cache: `embed_many` of texts that are all cached,
per text, beside the engine's own floor (an `AsyncBatcher` whose batch function returns its
items) over the same texts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MODEL = "text-embedding-3-small"
DIMS = 64
PRICE = 0.02  # USD per million input tokens
BATCH = 256
CONCURRENCY = 8


def corpus(n: int, edited: bool) -> list[str]:
    """`n` paragraphs; `edited`: every tenth one changed."""
    out = []
    for i in range(n):
        text = (
            f"Document {i}. Batching groups requests to an embeddings API so that one call "
            f"carries many texts; section {i % 97} covers retries and rate limits."
        )
        if edited and i % 10 == 0:
            text += " (revised)"
        out.append(text)
    return out


# --- one pass, in a child process ----------------------------------------------------------


async def run_ferrobatch(url: str, folder: str, texts: list[str]) -> list[Any]:
    return await ferrobatch_with(url, os.path.join(folder, "cache.db"), texts)


async def run_ferrobatch_redis(url: str, folder: str, texts: list[str]) -> list[Any]:
    return await ferrobatch_with(url, os.environ["BENCH_REDIS_URL"], texts)


async def ferrobatch_with(url: str, location: str, texts: list[str]) -> list[Any]:
    from ferrobatch import Cache
    from ferrobatch.openai import Embeddings

    emb = Embeddings(
        MODEL,
        base_url=url,
        api_key="bench",
        dimensions=DIMS,
        max_batch_size=BATCH,
        concurrency=CONCURRENCY,
        cache=Cache(location),
    )
    vectors = await emb.embed_many(texts)
    await emb.stop()
    return list(vectors)


async def run_langchain(url: str, folder: str, texts: list[str]) -> list[Any]:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import LocalFileStore
    from langchain_openai import OpenAIEmbeddings

    under = OpenAIEmbeddings(
        model=MODEL,
        base_url=url,
        api_key="bench",  # type: ignore[arg-type]
        dimensions=DIMS,
        check_embedding_ctx_length=False,  # no tiktoken download: the texts are short
    )
    store = LocalFileStore(os.path.join(folder, "lc"))
    cached = CacheBackedEmbeddings.from_bytes_store(
        under, store, namespace=MODEL, key_encoder="sha256"
    )
    return await cached.aembed_documents(texts)


async def run_litellm(url: str, folder: str, texts: list[str]) -> list[Any]:
    import litellm

    host, port = os.environ["BENCH_REDIS_URL"].split("//")[1].split("/")[0].split(":")
    litellm.cache = litellm.Cache(type="redis", host=host, port=port)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(chunk: list[str]) -> list[Any]:
        async with sem:
            resp = await litellm.aembedding(
                model=f"openai/{MODEL}",
                input=chunk,
                api_base=url,
                api_key="bench",
                dimensions=DIMS,
                caching=True,
            )
            return [d["embedding"] for d in resp.data]

    chunks = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    parts = await asyncio.gather(*[one(c) for c in chunks])
    return [v for p in parts for v in p]


RUNS = {
    "ferrobatch": run_ferrobatch,
    "langchain": run_langchain,
    "ferrobatch-redis": run_ferrobatch_redis,
    "litellm": run_litellm,
}
NEEDS = {
    "ferrobatch": [],
    "langchain": ["langchain_classic", "langchain_openai"],
    "ferrobatch-redis": [],
    "litellm": ["litellm", "redis"],
}
#: Contenders that need the throwaway Redis.
ON_REDIS = {"ferrobatch-redis", "litellm"}
#: Whom each peer is compared with: the same kind of store.
PEER_OF = {"langchain": "ferrobatch", "litellm": "ferrobatch-redis"}
NAMES = {
    "ferrobatch": "ferrobatch Embeddings + Cache (SQLite file)",
    "langchain": "LangChain CacheBackedEmbeddings (LocalFileStore)",
    "ferrobatch-redis": "ferrobatch Embeddings + Cache (Redis)",
    "litellm": "LiteLLM aembedding (Redis cache)",
}


def child(args: argparse.Namespace) -> None:
    """One pass: embed the corpus, check every vector, print wall and CPU as JSON."""
    from ferrobatch.testing import fake_embedding

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    for module in NEEDS[args.child]:
        __import__(module)  # import costs are not the pass's
    texts = corpus(args.n, args.edited)
    c0, t0 = time.process_time(), time.perf_counter()
    vectors = asyncio.run(RUNS[args.child](args.url, args.folder, texts))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    wrong = sum(
        1
        for text, v in zip(texts, vectors)
        if len(v) != DIMS
        or any(abs(float(a) - b) > 1e-5 for a, b in zip(v, fake_embedding(text, DIMS)))
    )
    if len(vectors) != len(texts):
        wrong += abs(len(texts) - len(vectors))
    print(json.dumps({"wall": wall, "cpu": cpu, "wrong": wrong}))


# --- the parent: the server, the passes, the table -----------------------------------------


def installed(name: str, redis_url: str | None) -> bool:
    import importlib.util

    if name in ON_REDIS and redis_url is None:
        return False
    return all(importlib.util.find_spec(m) is not None for m in NEEDS[name])


def flush(redis_url: str | None) -> None:
    if redis_url:
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(["redis-cli", "-p", port, "flushall"], capture_output=True, check=True)


def one_pass(server: Any, name: str, folder: str, n: int, edited: bool) -> dict[str, Any]:
    server.clear_requests()
    cmd = [sys.executable, __file__, "--child", name, "--url", server.openai_base_url]
    cmd += ["--folder", folder, "--n", str(n)] + (["--edited"] if edited else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    sent = [t for r in server.requests("/embeddings") for t in r["body"]["input"]]
    result["requests"] = len(server.requests("/embeddings"))
    result["texts"] = len(sent)
    result["tokens"] = sum(max(1, len(t) // 4) for t in sent)
    return result


async def all_hits_overhead(n: int) -> tuple[float, float]:
    """CPU µs per text: `embed_many` with every text in a memory cache, and the engine's
    floor (an identity batch function) over the same texts."""
    import ferrobatch
    from ferrobatch import Cache
    from ferrobatch.openai import Embeddings
    from ferrobatch.testing import FakeServer

    texts = corpus(n, False)
    with FakeServer(dimensions=DIMS) as server:
        cache = Cache("memory", max_entries=n)
        emb = Embeddings(
            MODEL,
            base_url=server.openai_base_url,
            api_key="k",
            dimensions=DIMS,
            max_batch_size=BATCH,
            cache=cache,
        )
        await emb.embed_many(texts)  # fills the cache
        c0 = time.process_time()
        await emb.embed_many(texts)
        hits = (time.process_time() - c0) / n * 1e6
        await emb.stop()
        assert cache.stats()["hits"] == n, cache.stats()

    async def identity(items: list[str]) -> list[str]:
        return items

    b = ferrobatch.AsyncBatcher(identity, max_batch_size=BATCH)
    await asyncio.gather(*(b.process(t) for t in texts[:1000]))  # warm
    c0 = time.process_time()
    await asyncio.gather(*(b.process(t) for t in texts))
    floor = (time.process_time() - c0) / n * 1e6
    await b.stop()
    return hits, floor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--hits-only", action="store_true", help="only the all-hits overhead")
    p.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--edited", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.n, args.reps = 300, 1
    from contextlib import ExitStack

    from ferrobatch.testing import FakeServer
    from ferrobatch.testing.redis import RedisServer, RedisUnavailable

    stack = ExitStack()
    try:
        redis_url: str | None = stack.enter_context(RedisServer()).url
        os.environ["BENCH_REDIS_URL"] = redis_url or ""
    except RedisUnavailable:
        redis_url = None
    names = [n for n in RUNS if installed(n, redis_url) and not args.hits_only]
    missing = [n for n in RUNS if n not in names]
    rows: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {n: [] for n in names}
    with stack, FakeServer(latency=args.latency, dimensions=DIMS) as server:
        for _ in range(args.reps):
            for name in names:
                flush(redis_url)
                with tempfile.TemporaryDirectory() as folder:
                    first = one_pass(server, name, folder, args.n, edited=False)
                    second = one_pass(server, name, folder, args.n, edited=True)
                if first["wrong"] or second["wrong"]:
                    raise SystemExit(
                        f"{name} returned {first['wrong']} + {second['wrong']} wrong vectors"
                    )
                rows[name].append((first, second))
    hits, floor = asyncio.run(all_hits_overhead(args.n))

    def med(name: str, which: int, key: str) -> float:
        return statistics.median(r[which][key] for r in rows[name])

    print(
        f"Re-index: {args.n} texts embedded, 10% edited, embedded again; server latency "
        f"{args.latency * 1000:.0f} ms; medians of {args.reps} (Python {sys.version.split()[0]})\n"
    )
    print(
        "| contender | pass | texts sent | requests | est. tokens | est. cost $ | wall s "
        "| client CPU s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        for which, label in ((0, "first"), (1, "second")):
            tokens = med(name, which, "tokens")
            print(
                f"| {NAMES[name]} | {label} | {med(name, which, 'texts'):.0f} "
                f"| {med(name, which, 'requests'):.0f} | {tokens:.0f} "
                f"| {tokens * PRICE / 1e6:.6f} | {med(name, which, 'wall'):.3f} "
                f"| {med(name, which, 'cpu'):.3f} |"
            )
    for name in missing if not args.hits_only else []:
        print(f"| {NAMES[name]} | not installed | | | | | | |")
    print()
    for peer, ours in PEER_OF.items():
        if peer in names and ours in names:
            print(
                f"Second pass, {NAMES[ours]} vs {NAMES[peer]}: "
                f"{med(peer, 1, 'wall') / med(ours, 1, 'wall'):.1f}x faster, "
                f"{med(peer, 1, 'cpu') / med(ours, 1, 'cpu'):.1f}x less client CPU; texts sent "
                f"{med(ours, 1, 'texts'):.0f} vs {med(peer, 1, 'texts'):.0f}"
            )
    print(
        f"\nAll hits (memory cache): {hits:.2f} µs CPU per text through embed_many; the engine's "
        f"floor (identity batch function): {floor:.2f} µs; the cache path adds "
        f"{hits - floor:.2f} µs per text"
    )


if __name__ == "__main__":
    main()
