"""Servers that are not OpenAI: FastAPI/pydantic error bodies, endless bodies; and inputs a
Python str may hold that UTF-8 cannot (lone surrogates)."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferrobatch
from _helpers import DIMS, close, embeddings
from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import REJECT_MARKER, FakeServer, fake_embedding

LONE = "bad \ud800 text"


# --- FastAPI / pydantic error bodies ---------------------------------------------------------


async def test_a_pydantic_422_naming_an_input_fails_it_alone() -> None:
    with FakeServer(error_style="pydantic", dimensions=DIMS) as server:
        emb = embeddings(server, max_batch_size=4, max_queue_time=0.05, encoding_format="float")
        texts = ["a", f"b {REJECT_MARKER}", "c", "d"]
        results = await asyncio.gather(*[emb.embed(t) for t in texts], return_exceptions=True)
        bad = results[1]
        assert isinstance(bad, ferrobatch.UnprocessableEntityError), bad
        assert bad.status == 422
        assert bad.param == "input[1]"
        assert "rejected by the test server" in bad.message
        assert "rejected by the test server" in str(bad)
        assert json.loads(bad.body or "")["detail"][0]["loc"][-1] == 1
        for i in (0, 2, 3):
            assert close(results[i], fake_embedding(texts[i], DIMS))
        assert [r["inputs"] for r in server.requests()] == [4, 3]
        await emb.stop()


async def test_a_pydantic_422_on_encoding_format_falls_back_to_floats() -> None:
    with FakeServer(error_style="pydantic", base64=False, dimensions=DIMS) as server:
        emb = embeddings(server)
        assert close(await emb.embed("a"), fake_embedding("a", DIMS))
        assert close(await emb.embed("b"), fake_embedding("b", DIMS))
        formats = [(r["status"], r["body"]["encoding_format"]) for r in server.requests()]
        assert formats == [(422, "base64"), (200, "float"), (200, "float")]
        await emb.stop()


async def test_a_refused_base64_that_then_succeeds_is_a_retry_not_a_failure() -> None:
    with FakeServer(base64=False, dimensions=DIMS) as server:
        emb = embeddings(server)
        await emb.embed("a")
        usage = emb.usage()["text-embedding-3-small"]
        assert (usage["requests"], usage["retries"], usage["failed_requests"]) == (1, 1, 0)
        await emb.stop()


async def test_a_pydantic_detail_text_becomes_the_message() -> None:
    with FakeServer(error_style="pydantic") as server:
        server.fault("status", status=404)
        emb = embeddings(server)
        with pytest.raises(ferrobatch.NotFoundError) as info:
            await emb.embed("a")
        assert info.value.message == "scripted fault: status 404"
        await emb.stop()


# --- lone surrogates -------------------------------------------------------------------------


async def test_a_lone_surrogate_fails_alone_with_invalid_input(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server, max_batch_size=3, max_queue_time=0.05)
    results = await asyncio.gather(
        emb.embed("fine"), emb.embed(LONE), emb.embed("also fine"), return_exceptions=True
    )
    assert close(results[0], fake_embedding("fine", DIMS))
    assert close(results[2], fake_embedding("also fine", DIMS))
    bad = results[1]
    assert isinstance(bad, ferrobatch.InvalidInputError), bad
    assert "surrogate" in str(bad) and "UTF-8" in str(bad)
    assert fake_ai_server.requests()[0]["body"]["input"] == ["fine", "also fine"]
    await emb.stop()


async def test_a_lone_surrogate_in_a_chat_message_fails_alone(fake_ai_server: FakeServer) -> None:
    chat = ChatCompletions("m", base_url=fake_ai_server.openai_base_url, api_key="k")
    ok, bad = await asyncio.gather(
        chat.create(messages=[{"role": "user", "content": "hi"}]),
        chat.create(messages=[{"role": "user", "content": LONE}]),
        return_exceptions=True,
    )
    assert isinstance(ok, dict) and ok["choices"]
    assert isinstance(bad, ferrobatch.InvalidInputError), bad
    assert "surrogate" in str(bad)
    assert fake_ai_server.request_count() == 1
    await chat.stop()


async def test_a_job_request_with_a_lone_surrogate_is_refused_at_submit(
    fake_ai_server: FakeServer, tmp_path: Path
) -> None:
    chat = ChatCompletions("m", base_url=fake_ai_server.openai_base_url, api_key="k")
    manager = JobManager(chat, JobStore(tmp_path / "jobs.db"))
    reqs = [
        JobRequest(id="ok", body={"messages": [{"role": "user", "content": "hi"}]}),
        JobRequest(id="broken", body={"messages": [{"role": "user", "content": LONE}]}),
    ]
    with pytest.raises(ferrobatch.InvalidInputError, match=r'"broken".*UTF-8'):
        await manager.create_job(reqs)
    assert manager.list_jobs() == []
    await chat.stop()


# --- bounded reads ---------------------------------------------------------------------------


async def test_an_answer_over_the_cap_fails_typed_and_the_batcher_keeps_working(
    fake_ai_server: FakeServer,
) -> None:
    emb = embeddings(
        fake_ai_server, max_response_bytes=64 * 1024, max_batch_size=2, max_queue_time=0.05
    )
    fake_ai_server.fault("endless")
    results = await asyncio.gather(emb.embed("a"), emb.embed("b"), return_exceptions=True)
    for r in results:
        assert isinstance(r, ferrobatch.ResponseTooLargeError), r
        assert isinstance(r, ferrobatch.ResponseFormatError)
        assert r.limit == 64 * 1024
    assert fake_ai_server.request_count() == 1  # not retried
    assert close(await emb.embed("c"), fake_embedding("c", DIMS))
    with pytest.raises(ferrobatch.ConfigError, match="max_response_bytes"):
        embeddings(fake_ai_server, max_response_bytes=0)
    await emb.stop()


async def test_an_endless_error_body_is_cut_at_64_kib(fake_ai_server: FakeServer) -> None:
    emb = embeddings(fake_ai_server)
    fake_ai_server.fault("endless", status=400)
    with pytest.raises(ferrobatch.BadRequestError) as info:
        await emb.embed("a")
    assert len(info.value.body or "") == 64 * 1024
    await emb.stop()


ENDLESS = """
    import asyncio, json, resource, sys
    import ferrobatch
    from ferrobatch.openai import Embeddings
    from ferrobatch.testing import FakeServer

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main() -> None:
        with FakeServer(dimensions=4) as server:
            emb = Embeddings("m", base_url=server.openai_base_url, api_key="k",
                             max_queue_time=0.001)
            await emb.embed("warm up")
            before = rss_mib()
            server.fault("endless")
            errors = await asyncio.gather(emb.embed("a"), emb.embed("b"), return_exceptions=True)
            after = rss_mib()
            ok = await emb.embed("after")
            await emb.stop()
        print(json.dumps({"before": before, "after": after,
                          "errors": [type(e).__name__ for e in errors], "ok": len(ok)}))

    asyncio.run(main())
"""


def test_an_endless_body_at_the_default_cap_keeps_memory_bounded(tmp_path: Path) -> None:
    """The default cap (256 MiB) bounds what an endless 200 costs; without a cap the client
    buffered without end. Run alone, so that the peak RSS is this case's."""
    script = tmp_path / "endless.py"
    script.write_text(textwrap.dedent(ENDLESS))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == ["ResponseTooLargeError", "ResponseTooLargeError"]
    assert out["ok"] == 4
    grown = out["after"] - out["before"]
    # The body is read up to 256 MiB and dropped: the peak grows by about that, never more.
    assert grown < 600, f"peak RSS grew by {grown:.0f} MiB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


# --- the official SDK reads the fake server's answers as it reads a real server's --------------


async def test_the_openai_sdk_reads_the_fake_server_in_both_error_styles() -> None:
    import openai

    for style, status in (("openai", 400), ("pydantic", 422)):
        with FakeServer(error_style=style, dimensions=DIMS) as server:  # type: ignore[arg-type]
            client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k")
            ok = await client.embeddings.create(model="m", input=["a", "b"])
            assert [d.index for d in ok.data] == [0, 1]
            assert close(ok.data[0].embedding, fake_embedding("a", DIMS))
            with pytest.raises(openai.APIStatusError) as info:
                await client.embeddings.create(model="m", input=["a", f"b {REJECT_MARKER}"])
            assert info.value.status_code == status
            if style == "pydantic":
                assert isinstance(info.value, openai.UnprocessableEntityError)
                detail = info.value.body["detail"]  # type: ignore[index]
                assert detail[0]["loc"] == ["body", "input", "list[constrained-str]", 1]
            else:
                assert isinstance(info.value, openai.BadRequestError)
                assert info.value.param == "input[1]"
            await client.close()
