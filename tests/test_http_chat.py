"""The chat batcher and the fake server's own surface."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request

import pytest

import ferrobatch
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import REJECT_MARKER, FakeServer

KEY = "sk-chat-key-42"


def make(server: FakeServer, **kw: object) -> ChatCompletions:
    opts: dict[str, object] = {
        "model": "fake-chat",
        "base_url": server.openai_base_url,
        "api_key": KEY,
        "initial_backoff": 0.01,
    }
    opts.update(kw)
    return ChatCompletions(**opts)  # type: ignore[arg-type]


async def test_create_returns_the_response_and_passes_fields_through(
    fake_ai_server: FakeServer,
) -> None:
    chat = make(fake_ai_server)
    resp = await chat.create(
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2,
        response_format={"type": "json_object"},
        vendor_extension={"nested": [1, 2.5, None, True]},
    )
    assert resp["choices"][0]["message"]["content"] == "fake reply to: hi"
    assert list(resp)[:2] == ["id", "object"]  # the server's key order is kept
    body = fake_ai_server.requests()[0]["body"]
    assert body["model"] == "fake-chat"
    assert body["temperature"] == 0.2
    assert body["response_format"] == {"type": "json_object"}
    assert body["vendor_extension"] == {"nested": [1, 2.5, None, True]}
    await chat.stop()


async def test_many_requests_one_each_with_their_own_answers(fake_ai_server: FakeServer) -> None:
    chat = make(fake_ai_server, concurrency=8)
    prompts = [f"question {i}" for i in range(50)]
    resps = await asyncio.gather(
        *[chat.create(messages=[{"role": "user", "content": p}]) for p in prompts]
    )
    got = [r["choices"][0]["message"]["content"] for r in resps]
    assert got == [f"fake reply to: {p}" for p in prompts]
    assert fake_ai_server.request_count() == 50
    u = chat.usage()["fake-chat"]
    assert u["requests"] == 50 and u["output_tokens"] > 0
    await chat.stop()


async def test_a_slow_answer_does_not_hold_back_others() -> None:
    with FakeServer() as server:
        chat = make(server, concurrency=4)
        server.fault("hang", duration=1.0)
        # asyncio.wait refuses coroutines, which ItemFutures also are: wrap them in tasks.
        slow = asyncio.create_task(chat.create(messages=[{"role": "user", "content": "slow"}]))
        await asyncio.sleep(0.05)
        fast = asyncio.create_task(chat.create(messages=[{"role": "user", "content": "fast"}]))
        done, _ = await asyncio.wait([slow, fast], return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast}
        await slow
        await chat.stop()


async def test_model_in_the_body_wins(fake_ai_server: FakeServer) -> None:
    chat = make(fake_ai_server, prices={"other": {"input": 1.0, "output": 2.0}})
    await chat.create(messages=[{"role": "user", "content": "x"}], model="other")
    assert fake_ai_server.requests()[0]["body"]["model"] == "other"
    assert chat.usage()["other"]["cost"] > 0
    await chat.stop()


async def test_chat_faults(fake_ai_server: FakeServer) -> None:
    chat = make(fake_ai_server, max_retries=1)
    msgs = [{"role": "user", "content": "x"}]
    fake_ai_server.fault("status", status=500)
    assert (await chat.create(messages=msgs))["choices"]
    fake_ai_server.fault("wrong_count")
    with pytest.raises(ferrobatch.ResponseFormatError, match="choices"):
        await chat.create(messages=msgs)
    fake_ai_server.fault("malformed")
    with pytest.raises(ferrobatch.ResponseFormatError):
        await chat.create(messages=msgs)
    with pytest.raises(ferrobatch.BadRequestError):
        await chat.create(messages=[{"role": "user", "content": REJECT_MARKER}])
    await chat.stop()


async def test_bad_bodies_get_typed_errors(fake_ai_server: FakeServer) -> None:
    chat = make(fake_ai_server)
    with pytest.raises(TypeError, match="messages"):
        chat.create()
    with pytest.raises(ferrobatch.InvalidInputError, match="stream"):
        await chat.create(messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(ferrobatch.InvalidInputError, match=r"body\[\"extra\"\]: a object"):
        await chat.create(messages=[{"role": "user", "content": "x"}], extra=object())
    with pytest.raises(ferrobatch.InvalidInputError, match="not a JSON number"):
        await chat.create(messages=[{"role": "user", "content": "x"}], temperature=float("nan"))
    with pytest.raises(TypeError, match="must be a dict"):
        chat.process(["not", "a", "dict"])  # type: ignore[arg-type]
    assert fake_ai_server.request_count() == 0
    await chat.stop()


async def test_chat_key_is_never_shown() -> None:
    with FakeServer(api_key="other") as server:
        chat = make(server)
        with pytest.raises(ferrobatch.AuthenticationError) as info:
            await chat.create(messages=[{"role": "user", "content": "x"}])
        for t in (str(info.value), info.value.body or "", repr(chat), repr(chat._client)):
            assert KEY not in t
        await chat.stop()


def test_single_item_batches_stay_refused_for_plain_batchers() -> None:
    async def fn(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(ferrobatch.ConfigError, match="max_batch_size"):
        ferrobatch.AsyncBatcher(fn, max_batch_size=1)


# --- the fake server ----------------------------------------------------------------------


def test_fake_server_speaks_plain_http_and_logs() -> None:
    with FakeServer() as server:
        req = urllib.request.Request(
            server.openai_base_url + "/embeddings",
            data=b'{"model": "m", "input": ["a", "b"], "dimensions": 3}',
            headers={"content-type": "application/json"},
        )
        import json

        with urllib.request.urlopen(req, timeout=5) as resp:
            body = json.loads(resp.read())
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert len(body["data"][0]["embedding"]) == 3
        assert body["usage"]["prompt_tokens"] == 2
        log = server.requests()
        assert log[0]["path"] == "/v1/embeddings" and log[0]["inputs"] == 2
        assert log[0]["status"] == 200 and log[0]["fault"] is None
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/nope", data=b"{}", timeout=5)
        assert info.value.code == 404
        info.value.close()


def test_fault_bookkeeping() -> None:
    with FakeServer() as server:
        server.fault("status", status=500, times=3, path="/chat")
        server.fault("reset")
        assert server.pending_faults() == 4
        server.clear_faults()
        assert server.pending_faults() == 0
        with pytest.raises(ferrobatch.ConfigError, match="kind"):
            server.fault("explode")  # type: ignore[arg-type]
        with pytest.raises(ferrobatch.ConfigError, match="status"):
            server.fault("status")


async def test_server_rate_limit_headers() -> None:
    with FakeServer(requests_per_minute=2) as server:
        import json

        def post() -> tuple[int, dict[str, str], dict[str, object]]:
            req = urllib.request.Request(
                server.openai_base_url + "/embeddings", data=b'{"input": "a"}'
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, dict(r.headers), json.loads(r.read())
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, dict(e.headers), json.loads(e.read())

        loop = asyncio.get_running_loop()
        results = [await loop.run_in_executor(None, post) for _ in range(3)]
        assert [r[0] for r in results] == [200, 200, 429]
        headers = {k.lower(): v for k, v in results[2][1].items()}
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["retry-after-ms"]) > 0


def test_server_runs_as_a_module() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferrobatch.testing", "--latency", "0.001"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ferrobatch fake server: http://127.0.0.1:")
        url = line.split(": ", 1)[1].strip()
        req = urllib.request.Request(url + "/v1/embeddings", data=b'{"input": ["x"]}')
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        # It exits at once on SIGTERM (about 0.03 s here); the bound leaves room for a loaded
        # machine and still fails a server that lingers for seconds.
        assert proc.wait(timeout=2) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_plugin_fixture_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("ferrobatch")
