"""`ferrobatch.anthropic.Messages` against the fake server, which the official `anthropic` SDK
must accept too."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anthropic
import pytest

import ferrobatch
from ferrobatch.anthropic import API_VERSION, Messages
from ferrobatch.testing import REJECT_MARKER, FakeServer

USER = [{"role": "user", "content": "hello there"}]


def messages(server: FakeServer, **kw: object) -> Messages:
    opts: dict[str, object] = {
        "base_url": server.anthropic_base_url,
        "api_key": "sk-ant-secret",
        "initial_backoff": 0.01,
    }
    opts.update(kw)
    return Messages("claude-test", **opts)  # type: ignore[arg-type]


async def test_a_message_with_usage_cost_and_headers() -> None:
    with FakeServer(api_key="sk-ant-secret") as server:
        m = messages(server, prices={"claude-test": {"input": 3.0, "output": 15.0}})
        replies = await asyncio.gather(
            *[
                m.create(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=32)
                for i in range(20)
            ]
        )
        assert [r["content"][0]["text"] for r in replies] == [
            f"fake reply to: q{i}" for i in range(20)
        ]
        assert all(r["type"] == "message" and r["model"] == "claude-test" for r in replies)
        sent = server.requests("/v1/messages")
        assert len(sent) == 20
        headers = sent[0]["headers"]
        assert headers["x-api-key"] == "sk-ant-secret"
        assert headers["anthropic-version"] == API_VERSION
        assert "authorization" not in headers
        assert sent[0]["body"]["max_tokens"] == 32
        u = m.usage()["claude-test"]
        tokens_in = sum(r["usage"]["input_tokens"] for r in replies)
        tokens_out = sum(r["usage"]["output_tokens"] for r in replies)
        assert (u["requests"], u["input_tokens"], u["output_tokens"]) == (20, tokens_in, tokens_out)
        assert u["cost"] == pytest.approx((tokens_in * 3.0 + tokens_out * 15.0) / 1e6)
        assert "sk-ant-secret" not in repr(m)
        await m.stop()


async def test_errors_map_to_the_exception_tree_and_529_is_retried() -> None:
    with FakeServer(api_key="right") as server:
        wrong = messages(server, api_key="wrong-key")
        with pytest.raises(ferrobatch.AuthenticationError) as auth:
            await wrong.create(messages=USER, max_tokens=8)
        assert auth.value.code == "authentication_error"
        assert auth.value.provider == "anthropic"
        assert "Anthropic API error 401" in str(auth.value)
        await wrong.stop()

        m = messages(server, api_key="right", max_retries=3)
        bad = [{"role": "user", "content": REJECT_MARKER}]
        with pytest.raises(ferrobatch.BadRequestError) as info:
            await m.create(messages=bad, max_tokens=8)
        assert info.value.code == "invalid_request_error"
        server.fault("status", status=529, times=2, retry_after_ms=5)
        reply = await m.create(messages=USER, max_tokens=8)
        assert reply["content"][0]["text"] == "fake reply to: hello there"
        assert m.usage()["claude-test"]["retries"] == 2
        with pytest.raises(TypeError, match="max_tokens"):
            m.create(messages=USER)
        with pytest.raises(ferrobatch.InvalidInputError, match="max_tokens"):
            await m.process({"messages": USER, "max_tokens": 0})
        with pytest.raises(ferrobatch.InvalidInputError, match="stream"):
            await m.process({"messages": USER, "max_tokens": 8, "stream": True})
        await m.stop()


def test_the_official_sdk_accepts_the_fake_server() -> None:
    with FakeServer(api_key="sk-ant") as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="sk-ant", max_retries=0)
        bad_key = anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0)
        with client, bad_key:  # closes their connection pools
            msg = client.messages.create(model="claude-test", max_tokens=16, messages=USER)
            assert msg.content[0].type == "text"
            assert msg.content[0].text == "fake reply to: hello there"
            assert msg.usage.input_tokens > 0 and msg.stop_reason == "end_turn"
            with pytest.raises(anthropic.BadRequestError) as info:
                client.messages.create(
                    model="claude-test",
                    max_tokens=16,
                    messages=[{"role": "user", "content": REJECT_MARKER}],
                )
            assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
            with pytest.raises(anthropic.AuthenticationError):
                bad_key.messages.create(model="claude-test", max_tokens=16, messages=USER)


def test_a_messages_jsonl_file_runs_as_a_job(tmp_path: Path) -> None:
    import json

    from ferrobatch.cli import main

    lines = [
        {
            "custom_id": f"m{i}",
            "method": "POST",
            "url": "/v1/messages",
            "body": {"model": "claude-test", "max_tokens": 16, "messages": USER},
        }
        for i in range(12)
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with FakeServer(api_key="sk-ant") as server:
        os.environ["FERROBATCH_TEST_ANTHROPIC_KEY"] = "sk-ant"
        try:
            args = ["run", str(src), "-o", str(out), "--base-url", server.anthropic_base_url]
            args += ["--api-key-env", "FERROBATCH_TEST_ANTHROPIC_KEY"]
            assert main(args) == 0
        finally:
            del os.environ["FERROBATCH_TEST_ANTHROPIC_KEY"]
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["custom_id"] for x in got] == [f"m{i}" for i in range(12)]
        body = got[0]["response"]["body"]
        assert body["type"] == "message" and body["content"][0]["text"].startswith("fake reply")
        assert server.requests("/v1/messages")[0]["headers"]["x-api-key"] == "sk-ant"
        bad = tmp_path / "bad.jsonl"
        no_max = {**lines[0], "body": {"model": "m", "messages": USER}}
        bad.write_text(json.dumps(no_max) + "\n")
        assert main(["run", str(bad), "-o", str(out), "--base-url", server.url]) == 2


async def test_output_tokens_have_their_own_budget_apart_from_input() -> None:
    with FakeServer(latency=0.3) as server:
        # Input: 60 tokens a minute, far below 4 times max_tokens but above 4 small prompts.
        # Output: 600 a minute, so two requests' max_tokens at a time.
        m = messages(
            server,
            rate_limiter=ferrobatch.RateLimiter(tokens_per_minute=60),
            output_rate_limiter=ferrobatch.RateLimiter(tokens_per_minute=600),
        )
        await asyncio.gather(*[m.create(messages=USER, max_tokens=300) for _ in range(4)])
        starts = sorted(r["at"] for r in server.requests("/v1/messages"))
        first = starts[0]
        assert starts[1] - first < 0.15  # both admitted at once
        assert starts[2] - first >= 0.25  # only once an answer refunded its unused output
        await m.stop()


def test_cache_prices_are_accepted_and_unknown_price_keys_named() -> None:
    prices = {"c": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}}
    Messages("c", base_url="http://127.0.0.1:9/v1", api_key="k", prices=prices)
    with pytest.raises(ferrobatch.ConfigError, match='"cache_miss"'):
        Messages(
            "c", base_url="http://127.0.0.1:9/v1", api_key="k", prices={"c": {"cache_miss": 1.0}}
        )


async def test_anthropic_base_url_means_what_the_official_sdk_means(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ANTHROPIC_BASE_URL holds the host, as for the official SDK: the same value sends both
    to the same server (ferrobatch also takes a value ending in /v1, which the SDK does not)."""
    with FakeServer(api_key="sk-ant") as server:
        for value in (server.url, server.url + "/", server.anthropic_base_url):
            monkeypatch.setenv("ANTHROPIC_BASE_URL", value)
            if not value.endswith("/v1"):
                with anthropic.Anthropic(api_key="sk-ant", max_retries=0) as sdk:
                    assert sdk.messages.create(model="claude-test", max_tokens=8, messages=USER)
            m = Messages("claude-test", api_key="sk-ant", max_retries=0)
            reply = await m.create(messages=USER, max_tokens=8)
            assert reply["content"][0]["text"] == "fake reply to: hello there"
            assert m.base_url == server.anthropic_base_url
            await m.stop()
        paths = {r["path"] for r in server.requests()}
        assert paths == {"/v1/messages"}, paths
