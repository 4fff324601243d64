"""OpenAI-compatible and Gemini embedding batchers against the shipped loopback server."""

from __future__ import annotations

import array
import asyncio
import logging
import time

import numpy as np
import pytest

import ferrobatch
from _helpers import DIMS, KEY, close, embeddings
from ferrobatch import RateLimiter
from ferrobatch.gemini import Embeddings as GeminiEmbeddings
from ferrobatch.openai import Embeddings
from ferrobatch.testing import REJECT_MARKER, FakeServer, fake_embedding


async def test_vectors_come_back_in_order_for_their_own_texts(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=64, concurrency=4)
    texts = [f"text number {i}" for i in range(500)]
    vectors = await asyncio.gather(*[emb.embed(t) for t in texts])
    assert all(close(v, fake_embedding(t, DIMS)) for v, t in zip(vectors, texts))
    # 500 texts in batches of 64: 8 requests, each with the documented body.
    reqs = fake_ai_server.requests("/v1/embeddings")
    assert len(reqs) == 8
    assert sum(r["inputs"] for r in reqs) == 500
    body = reqs[0]["body"]
    assert body["encoding_format"] == "base64"
    assert body["dimensions"] == DIMS
    assert body["model"] == "text-embedding-3-small"
    assert reqs[0]["headers"]["authorization"] == f"Bearer {KEY}"
    await emb.stop()


async def test_embed_many_keeps_order_and_float_format_works(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, encoding_format="float")
    texts = [f"t{i}" for i in range(300)]
    vectors = await emb.embed_many(texts)
    assert [close(v, fake_embedding(t, DIMS)) for v, t in zip(vectors, texts)] == [True] * 300
    assert fake_ai_server.requests()[0]["body"]["encoding_format"] == "float"
    await emb.stop()


async def test_a_server_refusing_base64_gets_floats_from_then_on() -> None:
    with FakeServer(base64=False) as server:
        emb = embeddings(server)
        assert close(await emb.embed("a"), fake_embedding("a", DIMS))
        assert close(await emb.embed("b"), fake_embedding("b", DIMS))
        formats = [(r["status"], r["body"]["encoding_format"]) for r in server.requests()]
        assert formats == [(400, "base64"), (200, "float"), (200, "float")]
        await emb.stop()


async def test_batches_split_at_the_input_cap(fake_ai_server: FakeServer) -> None:
    emb = embeddings(
        fake_ai_server, max_batch_size=100, max_queue_time=0.05, max_inputs_per_request=30
    )
    texts = [f"x{i}" for i in range(100)]
    vectors = await emb.embed_many(texts)
    assert all(close(v, fake_embedding(t, DIMS)) for v, t in zip(vectors, texts))
    sizes = sorted(r["inputs"] for r in fake_ai_server.requests())
    assert sizes == [10, 30, 30, 30]
    await emb.stop()


async def test_batches_split_at_the_token_cap(fake_ai_server: FakeServer) -> None:
    # 40 chars = 10 estimated tokens per text; at most 50 tokens per request.
    emb = embeddings(
        fake_ai_server, max_batch_size=20, max_queue_time=0.05, max_tokens_per_request=50
    )
    texts = [f"{i:040d}" for i in range(20)]
    vectors = await emb.embed_many(texts)
    assert all(close(v, fake_embedding(t, DIMS)) for v, t in zip(vectors, texts))
    assert [r["inputs"] for r in fake_ai_server.requests()] == [5, 5, 5, 5]
    await emb.stop()


async def test_server_cap_exceeded_is_a_bad_request(fake_ai_server: FakeServer) -> None:
    with FakeServer(max_inputs=4) as server:
        emb = embeddings(server, max_batch_size=10, max_queue_time=0.05)
        results = await asyncio.gather(
            *[emb.embed(f"t{i}") for i in range(6)], return_exceptions=True
        )
        assert all(isinstance(r, ferrobatch.BadRequestError) for r in results)
        assert server.request_count() == 1  # 400 is not retried
        await emb.stop()


async def test_numpy_format_gives_writable_float32_arrays(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, format="numpy")
    v = await emb.embed("hello")
    assert isinstance(v, np.ndarray)
    assert v.dtype == np.float32 and v.shape == (DIMS,)
    assert np.allclose(v, fake_embedding("hello", DIMS), atol=1e-6)
    v[0] = 1.0  # writable
    await emb.stop()


async def test_array_format_gives_stdlib_float32_arrays(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, format="array")
    v = await emb.embed("hello")
    assert isinstance(v, array.array) and v.typecode == "f" and len(v) == DIMS
    assert close(list(v), fake_embedding("hello", DIMS))
    await emb.stop()


async def test_one_rejected_input_fails_alone(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=5, max_queue_time=0.05)
    texts = ["a", "b", f"c {REJECT_MARKER}", "d", "e"]
    results = await asyncio.gather(*[emb.embed(t) for t in texts], return_exceptions=True)
    bad = results[2]
    assert isinstance(bad, ferrobatch.BadRequestError)
    assert bad.param == "input[2]" and bad.status == 400
    for i in (0, 1, 3, 4):
        assert close(results[i], fake_embedding(texts[i], DIMS))  # type: ignore[arg-type]
    # The batch, then the batch without the rejected input.
    assert [r["inputs"] for r in fake_ai_server.requests()] == [5, 4]
    await emb.stop()


async def test_empty_text_is_invalid_input_and_not_sent(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=2, max_queue_time=0.05)
    ok, empty = await asyncio.gather(emb.embed("fine"), emb.embed(""), return_exceptions=True)
    assert close(ok, fake_embedding("fine", DIMS))  # type: ignore[arg-type]
    assert isinstance(empty, ferrobatch.InvalidInputError)
    assert isinstance(empty, ValueError)
    assert fake_ai_server.requests()[0]["body"]["input"] == ["fine"]
    await emb.stop()


async def test_non_str_input_raises_type_error_at_once(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server)
    with pytest.raises(TypeError, match="text must be str, got int"):
        emb.embed(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        emb.embed_many(["a", None])  # type: ignore[list-item]
    assert fake_ai_server.request_count() == 0
    await emb.stop()


@pytest.mark.parametrize(
    ("fault", "hint"),
    [
        ({"retry_after": 0.2}, 0.2),
        ({"retry_after_ms": 200}, 0.2),
    ],
)
async def test_429_waits_for_the_server_hint_then_succeeds(
    fake_ai_server: FakeServer, fault: dict[str, float], hint: float
) -> None:
    emb = embeddings(fake_ai_server)
    fake_ai_server.fault("status", status=429, **fault)  # type: ignore[arg-type]
    v = await emb.embed("hello")
    assert close(v, fake_embedding("hello", DIMS))
    reqs = fake_ai_server.requests()
    assert [r["status"] for r in reqs] == [429, 200]
    assert reqs[1]["at"] - reqs[0]["at"] >= hint * 0.95
    usage = emb.usage()["text-embedding-3-small"]
    assert (usage["requests"], usage["retries"], usage["failed_requests"]) == (1, 1, 0)
    await emb.stop()


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
async def test_retryable_statuses_are_retried(fake_ai_server: FakeServer, status: int) -> None:
    emb = embeddings(fake_ai_server)
    fake_ai_server.fault("status", status=status, times=2)
    v = await emb.embed("x")
    assert close(v, fake_embedding("x", DIMS))
    assert [r["status"] for r in fake_ai_server.requests()] == [status, status, 200]
    await emb.stop()


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, ferrobatch.BadRequestError),
        (401, ferrobatch.AuthenticationError),
        (403, ferrobatch.PermissionDeniedError),
        (404, ferrobatch.NotFoundError),
        (422, ferrobatch.UnprocessableEntityError),
    ],
)
async def test_final_statuses_are_not_retried(
    fake_ai_server: FakeServer, status: int, exc: type[Exception]
) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=3, max_queue_time=0.05)
    fake_ai_server.fault("status", status=status)
    results = await asyncio.gather(*[emb.embed(t) for t in "abc"], return_exceptions=True)
    for r in results:
        assert isinstance(r, exc)
        assert isinstance(r, ferrobatch.APIStatusError)
        assert isinstance(r, ferrobatch.FerrobatchError)
        assert r.status == status and r.status_code == status
        assert r.body is not None and "scripted fault" in r.body
    assert fake_ai_server.request_count() == 1
    await emb.stop()


async def test_retries_run_out_into_typed_errors_for_every_item(
    fake_ai_server: FakeServer,
) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=4, max_queue_time=0.05, max_retries=2)
    fake_ai_server.fault("status", status=503, times=3)
    results = await asyncio.gather(*[emb.embed(t) for t in "abcd"], return_exceptions=True)
    assert len(results) == 4
    assert all(isinstance(r, ferrobatch.InternalServerError) for r in results)
    assert fake_ai_server.request_count() == 3
    assert emb.usage()["text-embedding-3-small"]["failed_requests"] == 1
    # The next batch is fine: a failing batch fails only its own items.
    assert close(await emb.embed("e"), fake_embedding("e", DIMS))
    await emb.stop()


async def test_rate_limit_error_after_retries(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_retries=1)
    fake_ai_server.fault("status", status=429, times=2, retry_after_ms=10)
    with pytest.raises(ferrobatch.RateLimitError) as info:
        await emb.embed("x")
    assert info.value.status == 429
    assert info.value.code == "rate_limit_exceeded"
    await emb.stop()


async def test_connection_reset_is_retried_then_reported(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_retries=1)
    fake_ai_server.fault("reset")
    assert close(await emb.embed("x"), fake_embedding("x", DIMS))
    fake_ai_server.fault("reset", times=2)
    with pytest.raises(ferrobatch.APIConnectionError) as info:
        await emb.embed("y")
    assert isinstance(info.value, ConnectionError)
    assert info.value.status is None
    await emb.stop()


async def test_hang_past_the_timeout(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, timeout=0.2, max_retries=1)
    fake_ai_server.fault("hang", duration=5.0)
    t0 = time.monotonic()
    assert close(await emb.embed("x"), fake_embedding("x", DIMS))  # the retry succeeds
    assert time.monotonic() - t0 >= 0.2
    fake_ai_server.fault("hang", times=2, duration=5.0)
    with pytest.raises(ferrobatch.APITimeoutError) as info:
        await emb.embed("y")
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, ferrobatch.APIConnectionError)
    assert info.value.timeout == pytest.approx(0.2)
    await emb.stop()


@pytest.mark.parametrize("kind", ["malformed", "wrong_count"])
async def test_bad_answers_are_response_format_errors(
    fake_ai_server: FakeServer, kind: str
) -> None:
    emb = embeddings(
        fake_ai_server, max_batch_size=4, max_queue_time=0.05, max_inputs_per_request=2
    )
    fake_ai_server.fault(kind)  # type: ignore[arg-type]
    texts = ["a", "b", "c", "d"]
    results = await asyncio.gather(*[emb.embed(t) for t in texts], return_exceptions=True)
    # Two requests of two: one got the bad answer, its two items fail; the others succeed.
    failed = [r for r in results if isinstance(r, ferrobatch.ResponseFormatError)]
    good = [(r, t) for r, t in zip(results, texts) if not isinstance(r, BaseException)]
    assert len(failed) == 2 and len(good) == 2
    assert all(close(r, fake_embedding(t, DIMS)) for r, t in good)  # type: ignore[arg-type]
    if kind == "wrong_count":
        assert "1 embeddings for 2 inputs" in str(failed[0])
    await emb.stop()


async def test_the_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeServer(api_key="sk-right") as server:
        emb = embeddings(server, api_key=KEY)  # the wrong key: the server echoes it back
        with pytest.raises(ferrobatch.AuthenticationError) as info:
            await emb.embed("x")
        err = info.value
        assert server.request_count() == 1  # 401 is not retried
        assert "Incorrect API key provided" in err.message
        texts = [str(err), repr(err), err.message, err.body or "", repr(emb)]
        texts += [repr(emb._client), str(emb.usage()), caplog.text, repr(err.args)]
        for t in texts:
            assert KEY not in t, t
        assert "***" in err.message
        await emb.stop()


async def test_extra_and_organization_headers_are_sent(fake_ai_server: FakeServer) -> None:
    emb = embeddings(
        fake_ai_server, organization="org-1", project="proj-2", headers={"X-Trace": "abc"}
    )
    await emb.embed("x")
    h = fake_ai_server.requests()[0]["headers"]
    assert (h["openai-organization"], h["openai-project"], h["x-trace"]) == (
        "org-1",
        "proj-2",
        "abc",
    )
    await emb.stop()


async def test_usage_and_cost(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, prices={"text-embedding-3-small": {"input": 0.02}})
    texts = [("abcd" * 25)[:-1] + str(i) for i in range(10)]  # 25 tokens each by the server's count
    await emb.embed_many(texts)
    u = emb.usage()["text-embedding-3-small"]
    assert u["input_tokens"] == 250
    assert u["cost"] == pytest.approx(250 * 0.02 / 1e6)
    await emb.stop()


async def test_shared_limiter_pauses_every_client_after_a_429(fake_ai_server: FakeServer) -> None:
    limiter = RateLimiter(requests_per_minute=10_000)
    a = embeddings(fake_ai_server, rate_limiter=limiter)
    b = embeddings(fake_ai_server, rate_limiter=limiter)
    fake_ai_server.fault("status", status=429, retry_after=0.4)
    await a.embed("first")  # 429, waits 0.4 s, succeeds
    # Meanwhile b was not used; now make a 429 hit a and have b start during the pause.
    fake_ai_server.clear_requests()
    fake_ai_server.fault("status", status=429, retry_after=0.4)
    ta = asyncio.ensure_future(a.embed("second"))
    await asyncio.sleep(0.1)
    tb = asyncio.ensure_future(b.embed("third"))
    await asyncio.gather(ta, tb)
    reqs = fake_ai_server.requests()
    assert reqs[0]["status"] == 429
    # b's request waited for the shared pause instead of going out at once.
    assert all(r["at"] - reqs[0]["at"] >= 0.35 for r in reqs[1:])
    assert len(reqs) == 3
    await a.stop()
    await b.stop()


async def test_requests_per_minute_budget_spaces_requests(fake_ai_server: FakeServer) -> None:
    # A budget of 120/min starts full (120) and refills 2/s: the 122nd request waits ~1 s.
    limiter = RateLimiter(requests_per_minute=120)
    emb = embeddings(fake_ai_server, rate_limiter=limiter, max_batch_size=2, concurrency=-1)
    t0 = time.monotonic()
    await emb.embed_many([f"t{i}" for i in range(244)])
    assert time.monotonic() - t0 >= 0.8
    assert fake_ai_server.request_count() == 122
    await emb.stop()


async def test_stop_drains_in_flight_requests() -> None:
    with FakeServer(latency=0.2) as server:
        emb = embeddings(server)
        futs = [emb.embed(f"t{i}") for i in range(10)]
        await asyncio.sleep(0.05)
        await emb.stop()
        assert all(f.done() and not f.cancelled() for f in futs)
        assert [f.exception() for f in futs] == [None] * 10
        with pytest.raises(ferrobatch.BatcherStoppedError):
            emb.embed("late")


async def test_force_stop_ends_hung_requests_with_stopped() -> None:
    with FakeServer() as server:
        emb = embeddings(server, timeout=30.0)
        server.fault("hang", duration=30.0)
        fut = emb.embed("x")
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await emb.stop(force=True)
        assert time.monotonic() - t0 < 5
        with pytest.raises(ferrobatch.BatcherStoppedError):
            await fut


async def test_cancelled_callers_are_not_sent(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=3, max_queue_time=0.1)
    futs = [emb.embed(t) for t in "abc"]
    futs[1].cancel()
    await asyncio.gather(futs[0], futs[2])
    assert fake_ai_server.requests()[0]["body"]["input"] == ["a", "c"]
    await emb.stop()


async def test_random_faults_lose_nothing(fake_ai_server: FakeServer) -> None:
    """Under a mix of every fault, each item ends exactly once: a correct vector or an error."""
    emb = embeddings(
        fake_ai_server, max_batch_size=16, max_queue_time=0.005, concurrency=4, timeout=0.3
    )
    kinds = ["reset", "malformed", "wrong_count", "hang"]
    for i in range(12):
        kind = kinds[i % len(kinds)]
        if kind == "hang":
            fake_ai_server.fault("hang", duration=2.0)
        else:
            fake_ai_server.fault(kind)  # type: ignore[arg-type]
        fake_ai_server.fault("status", status=(429, 500, 503)[i % 3], retry_after_ms=5)
    texts = [f"item {i}" for i in range(400)]
    results = await asyncio.gather(*[emb.embed(t) for t in texts], return_exceptions=True)
    assert len(results) == 400
    ok = 0
    for r, t in zip(results, texts):
        if isinstance(r, BaseException):
            assert isinstance(r, ferrobatch.APIError), r
        else:
            assert close(r, fake_embedding(t, DIMS))
            ok += 1
    assert ok > 0
    s = emb.stats()
    assert s.completed + s.failed == 400
    await emb.stop()


async def test_config_errors() -> None:
    with pytest.raises(ferrobatch.ConfigError, match="base_url"):
        Embeddings(base_url="ftp://example", api_key="k")
    with pytest.raises(ferrobatch.ConfigError, match="format"):
        Embeddings(base_url="http://127.0.0.1:9/v1", format="pandas")  # type: ignore[arg-type]
    with pytest.raises(ferrobatch.ConfigError, match="max_retries"):
        Embeddings(base_url="http://127.0.0.1:9/v1", max_retries=-1)
    with pytest.raises(ferrobatch.ConfigError, match="timeout"):
        Embeddings(base_url="http://127.0.0.1:9/v1", timeout=0)
    with pytest.raises(ferrobatch.ConfigError, match="prices"):
        Embeddings(base_url="http://127.0.0.1:9/v1", prices={"m": {"inptu": 1.0}})
    with pytest.raises(ferrobatch.ConfigError, match="requests_per_minute"):
        RateLimiter(requests_per_minute=0)


def test_official_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ferrobatch.ConfigError, match="OPENAI_API_KEY"):
        Embeddings()
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ferrobatch.ConfigError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        GeminiEmbeddings()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert "sk-from-env" not in repr(Embeddings())


# --- Gemini -------------------------------------------------------------------------------


def gemini(server: FakeServer, **kw: object) -> GeminiEmbeddings:
    opts: dict[str, object] = {
        "base_url": server.gemini_base_url,
        "api_key": KEY,
        "output_dimensionality": DIMS,
        "initial_backoff": 0.01,
    }
    opts.update(kw)
    return GeminiEmbeddings(**opts)  # type: ignore[arg-type]


async def test_gemini_batch_embed_contents(fake_ai_server: FakeServer) -> None:
    g = gemini(
        fake_ai_server, task_type="RETRIEVAL_DOCUMENT", max_batch_size=250, max_queue_time=0.05
    )
    texts = [f"doc {i}" for i in range(250)]
    vectors = await g.embed_many(texts)
    assert all(close(v, fake_embedding(t, DIMS)) for v, t in zip(vectors, texts))
    reqs = fake_ai_server.requests()
    # Split at the API's cap of 100 requests per call.
    assert sorted(r["inputs"] for r in reqs) == [50, 100, 100]
    r = reqs[0]
    assert r["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert r["headers"]["x-goog-api-key"] == KEY
    assert "authorization" not in r["headers"]
    first = r["body"]["requests"][0]
    assert first["taskType"] == "RETRIEVAL_DOCUMENT"
    assert first["outputDimensionality"] == DIMS
    assert first["model"] == "models/gemini-embedding-001"
    await g.stop()


async def test_gemini_retry_info_and_rejected_input(fake_ai_server: FakeServer) -> None:
    g = gemini(fake_ai_server, max_batch_size=3, max_queue_time=0.05)
    fake_ai_server.fault("status", status=429, retry_delay=0.2)
    texts = ["a", f"b {REJECT_MARKER}", "c"]
    results = await asyncio.gather(*[g.embed(t) for t in texts], return_exceptions=True)
    reqs = fake_ai_server.requests()
    assert [r["status"] for r in reqs] == [429, 400, 200]
    assert reqs[1]["at"] - reqs[0]["at"] >= 0.19
    assert isinstance(results[1], ferrobatch.BadRequestError)
    assert results[1].code == "INVALID_ARGUMENT"
    assert results[1].param == "requests[1].content"
    assert close(results[0], fake_embedding("a", DIMS))  # type: ignore[arg-type]
    assert close(results[2], fake_embedding("c", DIMS))  # type: ignore[arg-type]
    await g.stop()
