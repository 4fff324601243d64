"""Streamed chat through the batchers' limiter, retries, usage and metrics: both wire formats
checked against the official SDKs on the same fake server, and every scripted fault (a cut
before and after the first chunk, an error event, no usage, a slow first chunk, a stall, a
429 before the stream), a stalled consumer's memory, and a caller that leaves midway (the
server sees the disconnect)."""

from __future__ import annotations

import asyncio
import gc
import resource
import threading
import time
from typing import Any

import anthropic
import openai
import pytest

from ferrobatch import (
    APIConnectionError,
    APITimeoutError,
    InvalidInputError,
    RateLimiter,
    StreamError,
)
from ferrobatch.anthropic import Messages
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer

PRICES = {"gpt-x": {"input": 1.0, "output": 2.0}, "claude-x": {"input": 3.0, "output": 15.0}}
QUESTION = [{"role": "user", "content": "how do batchers share one rate limit between hosts"}]


def chat(server: FakeServer, **kw: Any) -> ChatCompletions:
    kw.setdefault("max_retries", 2)
    kw.setdefault("initial_backoff", 0.01)
    return ChatCompletions(
        "gpt-x", base_url=server.openai_base_url, api_key="sk-test", prices=PRICES, **kw
    )


def messages(server: FakeServer, **kw: Any) -> Messages:
    return Messages(
        "claude-x", base_url=server.anthropic_base_url, api_key="sk-test", prices=PRICES, **kw
    )


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


async def test_openai_stream_matches_the_official_sdk_text_and_usage(
    fake_ai_server: FakeServer,
) -> None:
    c = chat(fake_ai_server)
    async with c.stream(messages=QUESTION, temperature=0) as s:
        chunks = [x async for x in s]
    assert all(x["object"] == "chat.completion.chunk" for x in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]  # the usage chunk, as sent
    response, usage = s.response, s.usage
    assert response is not None and usage is not None
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == text_of(chunks)
    assert response["choices"][0]["finish_reason"] == "stop"
    assert usage["estimated"] is False

    sdk = openai.AsyncOpenAI(base_url=fake_ai_server.openai_base_url, api_key="sk-test")
    stream = await sdk.chat.completions.create(
        model="gpt-x",
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    sdk_text, sdk_usage = "", None
    async for chunk in stream:
        if chunk.choices:
            sdk_text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            sdk_usage = chunk.usage
    await sdk.close()
    assert sdk_text == response["choices"][0]["message"]["content"]
    assert sdk_usage is not None
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        sdk_usage.prompt_tokens,
        sdk_usage.completion_tokens,
    )
    # The client asked for the usage chunk itself; streams count in usage() like create().
    sent = fake_ai_server.requests("/chat/completions")[0]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    await c.create(messages=QUESTION, temperature=0)
    await c.stop()
    u = c.usage()["gpt-x"]
    assert u["requests"] == 2
    assert u["output_tokens"] == 2 * usage["output_tokens"]
    assert u["cost"] == pytest.approx(
        2 * (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6
    )


async def test_anthropic_stream_matches_the_official_sdk_and_never_sums_usage(
    fake_ai_server: FakeServer,
) -> None:
    m = messages(fake_ai_server)
    events = [e async for e in m.stream(messages=QUESTION, max_tokens=64)]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert "ping" not in {e["type"] for e in events}
    sdk = anthropic.AsyncAnthropic(base_url=fake_ai_server.url, api_key="sk-test")
    async with sdk.messages.stream(model="claude-x", max_tokens=64, messages=QUESTION) as st:  # type: ignore[arg-type]
        final = await st.get_final_message()
    await sdk.close()
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    first = final.content[0]
    assert first.type == "text" and text == first.text
    await m.stop()
    u = m.usage()["claude-x"]
    assert (u["input_tokens"], u["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


async def test_thread_callers_iterate_a_stream_without_a_loop(fake_ai_server: FakeServer) -> None:
    c = chat(fake_ai_server)
    with pytest.raises(RuntimeError, match="stream"):
        c.stream_sync(messages=QUESTION)  # on the loop's thread it would block: refused
    out: list[str] = []

    def work() -> None:
        with c.stream_sync(messages=QUESTION) as s:
            out.append(text_of(list(s)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    assert len(out) == 4 and len(set(out)) == 1 and out[0].startswith("fake reply")
    await c.stop()


async def test_a_cut_before_the_first_chunk_is_retried_and_after_it_raises(
    fake_ai_server: FakeServer,
) -> None:
    c = chat(fake_ai_server)
    fake_ai_server.fault("stream_cut", done=0)
    chunks = [x async for x in c.stream(messages=QUESTION)]
    assert text_of(chunks).startswith("fake reply")
    assert len(fake_ai_server.requests("/chat/completions")) == 2

    fake_ai_server.fault("stream_cut", done=4)
    got: list[dict[str, Any]] = []
    with pytest.raises(APIConnectionError, match="ended before"):
        async for x in c.stream(messages=QUESTION):
            got.append(x)
    assert len(got) == 4, "every chunk received came out before the error"
    assert len(fake_ai_server.requests("/chat/completions")) == 3, "not sent again"
    await c.stop()
    assert c.stream_stats()["streams"] == {"completed": 1, "failed": 1, "cancelled": 0}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_an_error_event_raises_stream_error_after_what_came_before(
    fake_ai_server: FakeServer, provider: str
) -> None:
    client: Any = chat(fake_ai_server) if provider == "openai" else messages(fake_ai_server)
    # Anthropic's third event is a ping, which is not handed out: four events, three chunks.
    fake_ai_server.fault("stream_error", done=3 if provider == "openai" else 4)
    got = []
    with pytest.raises(StreamError) as info:
        async for x in client.stream(messages=QUESTION, max_tokens=30):
            got.append(x)
    assert len(got) == 3
    assert info.value.code in ("overloaded", "overloaded_error")
    await client.stop()


async def test_a_stream_without_usage_is_settled_from_an_estimate(
    fake_ai_server: FakeServer,
) -> None:
    c = chat(fake_ai_server)
    fake_ai_server.fault("stream_no_usage")
    async with c.stream(messages=QUESTION) as s:
        assert [x async for x in s]
    assert s.usage is not None and s.usage["estimated"] is True
    assert s.usage["input_tokens"] > 0 and s.usage["output_tokens"] > 0
    # The caller turned the usage chunk off: respected, and estimated too.
    async with c.stream(messages=QUESTION, stream_options={"include_usage": False}) as s2:
        assert [x async for x in s2]
    assert s2.usage is not None and s2.usage["estimated"] is True
    sent = fake_ai_server.requests("/chat/completions")[-1]["body"]
    assert sent["stream_options"] == {"include_usage": False}
    await c.stop()


async def test_the_two_clocks(fake_ai_server: FakeServer) -> None:
    c = chat(fake_ai_server, max_retries=0)
    fake_ai_server.fault("stream_slow_first", duration=5)
    t0 = time.monotonic()
    with pytest.raises(APITimeoutError) as info:
        async for _ in c.stream(messages=QUESTION, first_token_timeout=0.3):
            pass
    assert info.value.timeout == pytest.approx(0.3)
    assert time.monotonic() - t0 < 2

    fake_ai_server.fault("stream_stall", done=3, duration=5)
    got = []
    with pytest.raises(APITimeoutError) as info:
        async for x in c.stream(messages=QUESTION, idle_timeout=0.3):
            got.append(x)
    assert len(got) == 3 and info.value.timeout == pytest.approx(0.3)
    await c.stop()


async def test_a_429_before_the_stream_waits_retry_after_and_goes_on(
    fake_ai_server: FakeServer,
) -> None:
    c = chat(fake_ai_server)
    fake_ai_server.fault("status", status=429, retry_after=0.2)
    t0 = time.monotonic()
    chunks = [x async for x in c.stream(messages=QUESTION)]
    assert text_of(chunks).startswith("fake reply")
    assert time.monotonic() - t0 >= 0.18
    await c.stop()
    assert c.usage()["gpt-x"]["retries"] == 1


async def test_bad_bodies_are_typed_errors(fake_ai_server: FakeServer) -> None:
    c = chat(fake_ai_server)
    with pytest.raises(TypeError, match="messages"):
        c.stream(max_tokens=3)
    with pytest.raises(TypeError, match="list of message dicts"):
        c.stream(messages="hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_tokens"):
        messages(fake_ai_server).stream(messages=QUESTION)
    with pytest.raises(InvalidInputError, match="stream_options"):
        async for _ in c.stream(messages=QUESTION, stream_options=3):
            pass
    assert fake_ai_server.requests() == []
    await c.stop()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def test_a_stalled_consumer_does_not_grow_the_clients_memory(
    fake_ai_server: FakeServer,
) -> None:
    c = chat(fake_ai_server)
    fake_ai_server.fault("stream_long", done=20_000)  # ~20 MiB of text, more on the wire
    gc.collect()
    before = rss_mib()
    n = 0
    async with c.stream(messages=QUESTION) as s:
        async for _ in s:
            n += 1
            if n == 50:
                await asyncio.sleep(1.0)  # the server would send everything meanwhile
                stalled = rss_mib()
            if n == 60:
                break
    assert stalled - before < 8, f"memory grew {stalled - before:.1f} MiB while stalled"
    await c.stop()
    assert c.stream_stats()["streams"]["cancelled"] == 1


class Upstream:
    """A raw SSE server on a free loopback port that streams a chunk every 50 ms forever
    and records when its client hangs up."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = (
            b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-x",'
            b'"choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}\n\n'
        )
        try:
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            self.closed.set()
        finally:
            writer.close()


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_leaving_a_stream_closes_the_connection_at_once(how: str) -> None:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = ChatCompletions("gpt-x", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    if how == "break":
        async for _ in c.stream(messages=QUESTION):
            if up.sent >= 3:
                break
    else:

        async def consume() -> None:
            async for _ in c.stream(messages=QUESTION):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(up.closed.wait(), timeout=2)  # the server saw the disconnect
    server.close()
    await c.stop()
    stats = c.stream_stats()
    assert stats["streams"]["cancelled"] == 1
    u = c.usage()["gpt-x"]
    assert u["failed_requests"] == 1 and u["output_tokens"] > 0  # settled from what came


async def test_a_stream_holds_its_reservation_until_it_settles(fake_ai_server: FakeServer) -> None:
    """600 tokens a minute: a stream reserving its input plus max_tokens=500 leaves no room for
    a second one until it ends; then its unused reservation comes back at once (refilling it
    would take most of a minute)."""
    limiter = RateLimiter(tokens_per_minute=600)
    c = chat(fake_ai_server, rate_limiter=limiter)
    fake_ai_server.fault("stream_stall", done=2, duration=1.0)  # A stays open about 1 s
    first = c.stream(messages=QUESTION, max_tokens=500)
    await first.__anext__()
    t0 = time.monotonic()
    second_began: list[float] = []

    async def second() -> None:
        async with c.stream(messages=QUESTION, max_tokens=500) as s:
            await s.__anext__()
            second_began.append(time.monotonic() - t0)
            assert [x async for x in s]

    task = asyncio.ensure_future(second())
    await asyncio.sleep(0.3)
    assert not second_began, "the second stream was admitted while the first held its tokens"
    assert [x async for x in first]  # the first ends (after its stall) and settles
    ended = time.monotonic() - t0
    await task
    assert ended - 0.1 <= second_began[0] <= ended + 2.0
    assert len(fake_ai_server.requests("/chat/completions")) == 2
    await c.stop()
