"""The result cache: answers already paid for are not paid again, in memory, in a SQLite
file, in Redis and in PostgreSQL; a damaged entry or an unreachable store never fails a request."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ferrobatch import BadRequestError, Cache, ConfigError, InvalidInputError
from ferrobatch.anthropic import Messages
from ferrobatch.openai import ChatCompletions, Embeddings
from ferrobatch.testing import FakeServer, fake_embedding
from ferrobatch.testing.postgres import PostgresServer
from ferrobatch.testing.redis import RedisServer

MODEL = "text-embedding-3-small"
PRICES = {MODEL: {"input": 0.02}}


def client(server: FakeServer, cache: Cache, **kw: Any) -> Embeddings:
    return Embeddings(
        base_url=server.openai_base_url,
        api_key="sk-secret-key",
        dimensions=8,
        max_queue_time=0.005,
        cache=cache,
        prices=PRICES,
        **kw,
    )


def sent_texts(server: FakeServer) -> list[str]:
    return [t for r in server.requests("/embeddings") for t in r["body"]["input"]]


async def embed_all(emb: Embeddings, texts: list[str]) -> list[Any]:
    out = await emb.embed_many(texts)
    await emb.stop()
    return out


def check(texts: list[str], vectors: list[Any]) -> None:
    for t, v in zip(texts, vectors):
        assert v == pytest.approx(fake_embedding(t, 8), abs=1e-6), t


def location_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "postgresql"])
async def test_a_second_run_sends_nothing(
    fake_ai_server: FakeServer, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    cache = Cache(location_of(kind, tmp_path, request), namespace=f"second-run-{kind}")
    texts = [f"text number {i}" for i in range(50)]
    first = client(fake_ai_server, cache)
    check(texts, await embed_all(first, texts))
    assert sorted(sent_texts(fake_ai_server)) == sorted(texts)
    u1 = first.usage()[MODEL]
    assert u1["cached_requests"] == 0 and u1["saved_cost"] is None

    fake_ai_server.clear_requests()
    second = client(fake_ai_server, cache)
    check(texts, await embed_all(second, texts))
    assert sent_texts(fake_ai_server) == []
    u2 = second.usage().get(MODEL)
    assert u2 is not None
    assert u2["cached_requests"] == 50 and u2["requests"] == 0 and u2["input_tokens"] == 0
    assert u2["cached_input_tokens"] > 0
    assert u2["saved_cost"] == pytest.approx(u2["cached_input_tokens"] * 0.02 / 1e6)
    assert not u2["cost"]  # nothing was paid
    s = cache.stats()
    assert s["hits"] == 50 and s["misses"] == 50 and s["writes"] == 50
    assert cache.entries() == 50


async def test_a_batch_of_hits_and_misses_sends_only_the_misses(fake_ai_server: FakeServer) -> None:
    cache = Cache("memory")
    await embed_all(client(fake_ai_server, cache), ["b", "d"])
    fake_ai_server.clear_requests()
    texts = ["a", "b", "c", "d", "e"]
    vectors = await embed_all(client(fake_ai_server, cache), texts)
    check(texts, vectors)  # every vector is its own text's, hits and misses interleaved
    assert sorted(sent_texts(fake_ai_server)) == ["a", "c", "e"]


async def test_keys_keep_models_and_dimensions_apart(fake_ai_server: FakeServer) -> None:
    cache = Cache("memory")
    await embed_all(client(fake_ai_server, cache), ["x"])
    fake_ai_server.clear_requests()
    other = Embeddings(
        base_url=fake_ai_server.openai_base_url,
        api_key="k",
        dimensions=16,
        max_queue_time=0.005,
        cache=cache,
    )
    v = await embed_all(other, ["x"])
    assert sent_texts(fake_ai_server) == ["x"] and len(v[0]) == 16


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_namespaces_and_clear(
    fake_ai_server: FakeServer, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    path = location_of(kind, tmp_path, request)
    a, b = Cache(path, namespace="a"), Cache(path, namespace="b")
    await embed_all(client(fake_ai_server, a), ["x", "y"])
    fake_ai_server.clear_requests()
    await embed_all(client(fake_ai_server, b), ["x"])
    assert sent_texts(fake_ai_server) == ["x"]
    assert a.clear() == 2 and a.entries() == 0 and b.entries() == 1


async def test_a_damaged_entry_is_a_miss_and_one_warning(
    fake_ai_server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "c.db"
    cache = Cache(str(db))
    await embed_all(client(fake_ai_server, cache), ["x", "y"])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ferrobatch_cache SET value = substr(value, 1, length(value) - 3)")
    fake_ai_server.clear_requests()
    with caplog.at_level(logging.WARNING, logger="ferrobatch"):
        vectors = await embed_all(client(fake_ai_server, cache), ["x", "y"])
    check(["x", "y"], vectors)  # never a wrong answer
    assert sorted(sent_texts(fake_ai_server)) == ["x", "y"]
    warnings = [r for r in caplog.records if "unreadable entry" in r.getMessage()]
    assert len(warnings) == 1
    assert cache.stats()["corrupt"] == 2
    # Written again: a third run is all hits.
    fake_ai_server.clear_requests()
    await embed_all(client(fake_ai_server, cache), ["x", "y"])
    assert sent_texts(fake_ai_server) == []


def fill_from_two_processes(server: FakeServer, location: str) -> Cache:
    """Two processes embed overlapping ranges of texts through one cache at the same time;
    then every text is a hit."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from ferrobatch import Cache
        from ferrobatch.openai import Embeddings

        async def main():
            emb = Embeddings(base_url=sys.argv[1], api_key="k", dimensions=8,
                             max_batch_size=16, cache=Cache(sys.argv[2]))
            texts = [f"t{i}" for i in range(int(sys.argv[3]), int(sys.argv[4]))]
            await emb.embed_many(texts)
            await emb.stop()
        asyncio.run(main())
        """
    )
    url = server.openai_base_url
    procs = [
        subprocess.Popen([sys.executable, "-c", script, url, location, "0", "600"]),
        subprocess.Popen([sys.executable, "-c", script, url, location, "300", "900"]),
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = Cache(location)
    assert cache.entries() == 900  # nothing lost, the overlap stored once
    server.clear_requests()
    texts = [f"t{i}" for i in range(900)]
    vectors = asyncio.run(embed_all(client(server, cache), texts))
    check(texts, vectors)
    assert sent_texts(server) == []
    return cache


def test_two_processes_fill_one_sqlite_file_at_once(
    fake_ai_server: FakeServer, tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    fill_from_two_processes(fake_ai_server, str(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_processes_fill_one_redis_at_once(
    fake_ai_server: FakeServer, redis_server: RedisServer
) -> None:
    cache = fill_from_two_processes(fake_ai_server, redis_server.url)
    assert cache.stats()["corrupt"] == 0


def test_two_processes_fill_one_postgres_database_at_once(
    fake_ai_server: FakeServer, postgres_dsn: str
) -> None:
    cache = fill_from_two_processes(fake_ai_server, postgres_dsn)
    assert cache.stats()["corrupt"] == 0


async def test_postgres_is_shared_bounded_and_holds_no_text_or_key(
    fake_ai_server: FakeServer, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    cache = Cache(postgres_dsn, ttl=60, max_entries=1000)
    texts = ["secret text one", "secret text two"]
    await embed_all(client(fake_ai_server, cache), texts)
    fake_ai_server.clear_requests()
    again = Cache(postgres_dsn, ttl=60, max_entries=1000)  # another client, same store
    check(texts, await embed_all(client(fake_ai_server, again), texts))
    assert sent_texts(fake_ai_server) == []
    db = postgres_dsn.rsplit("/", 1)[1]
    dump = postgres_server._run(
        "pg_dump", "-h", "127.0.0.1", "-p", str(postgres_server.port), "-U", postgres_server.user,
        "-a", "-t", "ferrobatch_cache", db,
    )  # fmt: skip
    assert "COPY public.ferrobatch_cache" in dump
    for forbidden in ("secret", "sk-secret-key", "text"):
        assert forbidden not in dump.split("COPY public.ferrobatch_cache", 1)[1]
    bounded = Cache(postgres_dsn, max_entries=5, namespace="bounded")
    await embed_all(client(fake_ai_server, bounded, max_batch_size=4), [f"t{i}" for i in range(12)])
    assert bounded.entries() == 5
    assert again.entries() == 2 and again.clear() == 2


async def test_redis_is_shared_and_holds_no_text_or_key(
    fake_ai_server: FakeServer, redis_server: RedisServer
) -> None:
    cache = Cache(redis_server.url, ttl=60, max_entries=1000)
    texts = ["secret text one", "secret text two"]
    await embed_all(client(fake_ai_server, cache), texts)
    fake_ai_server.clear_requests()
    again = Cache(redis_server.url, ttl=60, max_entries=1000)  # another client, same store
    check(texts, await embed_all(client(fake_ai_server, again), texts))
    assert sent_texts(fake_ai_server) == []
    out = subprocess.run(
        ["redis-cli", "-u", redis_server.url, "--scan"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip(), "no keys written"
    for forbidden in ("secret", "sk-secret-key", "text"):
        assert forbidden not in out
    assert again.entries() == 2
    assert again.clear() == 2


async def test_redis_bounds_its_entries(
    fake_ai_server: FakeServer, redis_server: RedisServer
) -> None:
    cache = Cache(redis_server.url, max_entries=5, namespace="bounded")
    await embed_all(client(fake_ai_server, cache, max_batch_size=4), [f"t{i}" for i in range(12)])
    assert cache.entries() == 5


@pytest.mark.parametrize(
    "location", ["redis://:pw-in-url@127.0.0.1:9/0", "postgresql://u:pw-in-url@127.0.0.1:9/db"]
)
async def test_an_unreachable_store_never_fails_a_request(
    fake_ai_server: FakeServer, caplog: pytest.LogCaptureFixture, location: str
) -> None:
    cache = Cache(location)
    assert "pw-in-url" not in repr(cache) and "pw-in-url" not in cache.location
    with caplog.at_level(logging.WARNING, logger="ferrobatch"):
        vectors = await embed_all(client(fake_ai_server, cache), ["x", "y"])
    check(["x", "y"], vectors)
    warnings = [r.getMessage() for r in caplog.records if "result cache" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "pw-in-url" not in warnings[0]
    assert cache.stats()["errors"] >= 1


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ttl"):
        Cache("memory", ttl=0)
    with pytest.raises(ConfigError, match="max_entries"):
        Cache("memory", max_entries=0)
    with pytest.raises(ConfigError, match="unknown scheme"):
        Cache("ftp://user:pw@host/x")
    assert repr(Cache(str(tmp_path / "c.db"), ttl=5)).startswith("Cache(")


# Chat: cached only when the client was given a cache; the whole body is the key.

CHAT_PRICES = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.6},
    "claude-x": {"input": 3, "output": 15},
}


def chat_client(server: FakeServer, cache: Cache | None) -> ChatCompletions:
    return ChatCompletions(
        "gpt-4o-mini",
        base_url=server.openai_base_url,
        api_key="sk-secret-key",
        cache=cache,
        prices=CHAT_PRICES,
        max_retries=0,
    )


async def test_chat_answers_the_same_body_from_the_cache_whatever_its_key_order(
    fake_ai_server: FakeServer,
) -> None:
    cache = Cache("memory")
    chat = chat_client(fake_ai_server, cache)
    first = await chat.create(
        messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=20
    )
    # The same body, its keys (at every depth) in another order: answered from the cache.
    again = await chat.create(
        max_tokens=20, temperature=0, messages=[{"content": "hello", "role": "user"}]
    )
    assert again == first
    assert len(fake_ai_server.requests("/chat/completions")) == 1
    # Every field counts: another temperature, another model, another message is sent.
    await chat.create(messages=[{"role": "user", "content": "hello"}], temperature=1, max_tokens=20)
    await chat.create(
        messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=20, model="m2"
    )
    await chat.create(
        messages=[{"role": "user", "content": "hello!"}], temperature=0, max_tokens=20
    )
    assert len(fake_ai_server.requests("/chat/completions")) == 4
    await chat.stop()
    u = chat.usage()["gpt-4o-mini"]
    assert u["requests"] == 3 and u["cached_requests"] == 1
    tokens_in, tokens_out = first["usage"]["prompt_tokens"], first["usage"]["completion_tokens"]
    assert u["cached_input_tokens"] == tokens_in
    assert u["saved_cost"] == pytest.approx((tokens_in * 0.15 + tokens_out * 0.6) / 1e6)
    assert cache.stats()["hits"] == 1 and cache.entries() == 4


async def test_chat_without_a_cache_and_with_cache_false_sends_every_time(
    fake_ai_server: FakeServer,
) -> None:
    plain = chat_client(fake_ai_server, None)
    for _ in range(2):
        await plain.create(messages=[{"role": "user", "content": "hi"}])
    await plain.stop()
    assert len(fake_ai_server.requests("/chat/completions")) == 2

    fake_ai_server.clear_requests()
    cache = Cache("memory")
    chat = chat_client(fake_ai_server, cache)
    body = {"messages": [{"role": "user", "content": "fresh"}]}
    await chat.create(**body, cache=False)  # sent, and not stored
    assert cache.entries() == 0
    await chat.create(**body)  # so this one is sent too, and stored
    await chat.create(**body, cache=False)  # sent although cached
    await chat.create(**body)  # answered from the cache
    await chat.stop()
    assert len(fake_ai_server.requests("/chat/completions")) == 3
    assert cache.stats()["hits"] == 1


async def test_chat_errors_are_never_cached_and_a_batch_mixes_hits_and_sends(
    fake_ai_server: FakeServer,
) -> None:
    cache = Cache("memory")
    chat = ChatCompletions(
        "gpt-4o-mini",
        base_url=fake_ai_server.openai_base_url,
        api_key="k",
        cache=cache,
        max_retries=0,
        max_batch_size=4,
        max_queue_time=0.05,
    )
    fake_ai_server.fault("status", status=400, path="/chat/completions")
    with pytest.raises(BadRequestError):
        await chat.create(messages=[{"role": "user", "content": "q0"}])
    assert cache.entries() == 0
    await chat.create(messages=[{"role": "user", "content": "q1"}])
    fake_ai_server.clear_requests()
    # One batch: q0 (failed before, so sent), q1 (a hit), q2 (new), and a bad body.
    out = await asyncio.gather(
        *(chat.create(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)),
        chat.create(messages=[{"role": "user", "content": "q3"}], stream=True),
        return_exceptions=True,
    )
    await chat.stop()
    assert [isinstance(o, dict) for o in out] == [True, True, True, False]
    assert isinstance(out[3], InvalidInputError)
    sent = sorted(r["body"]["messages"][0]["content"] for r in fake_ai_server.requests())
    assert sent == ["q0", "q2"]
    assert cache.entries() == 3


async def test_messages_are_cached_with_their_usage(fake_ai_server: FakeServer) -> None:
    cache = Cache("memory", namespace="messages")
    msgs = Messages(
        "claude-x",
        base_url=fake_ai_server.anthropic_base_url,
        api_key="k",
        cache=cache,
        prices=CHAT_PRICES,
    )
    a = await msgs.create(messages=[{"role": "user", "content": "hey"}], max_tokens=30)
    b = await msgs.create(max_tokens=30, messages=[{"content": "hey", "role": "user"}])
    await msgs.stop()
    assert a == b and len(fake_ai_server.requests("/messages")) == 1
    u = msgs.usage()["claude-x"]
    assert u["cached_requests"] == 1
    expected = (a["usage"]["input_tokens"] * 3 + a["usage"]["output_tokens"] * 15) / 1e6
    assert u["saved_cost"] == pytest.approx(expected)
