"""Jobs through the providers' batch APIs (OpenAI, Anthropic, Gemini) against the fake server,
which the official SDKs are checked to accept too."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ferrobatch.anthropic import Messages
from ferrobatch.cli import main
from ferrobatch.jobs import JobManager, JobRequest, JobStatus, JobStore
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import REJECT_MARKER, FakeServer

PROVIDERS = ["openai", "anthropic", "gemini"]
PRICES = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "claude-haiku": {"input": 0.80, "output": 4.00},
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
}
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku", "gemini": "gemini-2.5-flash"}
#: A substring of each provider's create path only (faults scripted on it hit creates).
CREATE = {
    "openai": "/v1/batches",
    "anthropic": "/v1/messages/batches",
    "gemini": ":batchGenerateContent",
}


def base_url(provider: str, server: FakeServer) -> str:
    if provider == "gemini":
        return server.url + "/v1beta/openai"  # Gemini's OpenAI-compatible routes
    return server.openai_base_url


def client(provider: str, server: FakeServer) -> ChatCompletions | Messages:
    url = base_url(provider, server)
    if provider == "anthropic":
        return Messages(MODEL[provider], base_url=url, api_key="k", prices=PRICES)
    return ChatCompletions(MODEL[provider], base_url=url, api_key="k", prices=PRICES)


def manager(provider: str, server: FakeServer, **kw: Any) -> JobManager:
    kw.setdefault("poll_interval", 0.03)
    return JobManager(
        client(provider, server),
        JobStore(),
        via="batch-api",
        batch_provider="gemini" if provider == "gemini" else None,
        **kw,
    )


def body(provider: str, text: str) -> dict[str, Any]:
    b: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if provider == "anthropic":
        b["max_tokens"] = 16
    return b


def requests(provider: str, n: int) -> list[JobRequest]:
    return [JobRequest(id=f"q{i}", body=body(provider, f"item {i}")) for i in range(n)]


def creates(server: FakeServer, provider: str) -> list[dict[str, Any]]:
    return [
        r
        for r in server.requests()
        if r["method"] == "POST"
        and (
            r["path"].endswith(CREATE[provider])
            if provider != "gemini"
            else CREATE[provider] in r["path"]
        )
        and r["status"] == 200
    ]


def usage_of(provider: str, response: dict[str, Any]) -> tuple[int, int]:
    u = response["usage"]
    if provider == "anthropic":
        return (
            u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"],
            u["output_tokens"],
        )
    return u["prompt_tokens"], u["completion_tokens"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_job_runs_as_several_batches_and_costs_half_of_what_they_report(
    provider: str,
) -> None:
    with FakeServer() as server:
        m = manager(provider, server, batch_requests=500)
        job = await m.create_job(requests(provider, 2000))
        job = await m.wait(job.id)
        assert job.status is JobStatus.COMPLETED
        assert len(creates(server, provider)) == 4
        batches = m.store.provider_batches(job.id)
        assert [b.requests for b in batches] == [500] * 4
        assert all(b.state == "settled" and b.batch_id for b in batches)
        results = await m.get_results(job.id)
        assert [r.id for r in results] == [f"q{i}" for i in range(2000)]
        assert all(r.ok for r in results)
        if provider == "anthropic":
            assert results[3].response["content"][0]["text"] == "fake reply to: item 3"
        else:
            assert results[3].response["choices"][0]["message"]["content"] == (
                "fake reply to: item 3"
            )
        tokens = [usage_of(provider, r.response) for r in results if r.response]
        p = await m.progress(job.id)
        assert (p.input_tokens, p.output_tokens) == tuple(map(sum, zip(*tokens)))
        price = PRICES[MODEL[provider]]
        half = (p.input_tokens * price["input"] + p.output_tokens * price["output"]) / 1e6 / 2
        assert p.cost == pytest.approx(half, rel=1e-12)
        await m.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_expired_batch_keeps_what_finished_and_the_rest_goes_again(
    provider: str,
) -> None:
    with FakeServer() as server:
        server.fault("batch_expire", done=100, path=CREATE[provider])
        m = manager(provider, server)
        job = await m.create_job(requests(provider, 300))
        job = await m.wait(job.id)
        assert job.status is JobStatus.COMPLETED
        p = await m.progress(job.id)
        assert (p.succeeded, p.failed) == (300, 0)
        sizes = [b.requests for b in m.store.provider_batches(job.id)]
        # Gemini returns nothing of an expired batch; the others their partial output.
        assert sizes == ([300, 300] if provider == "gemini" else [300, 200])
        status = m.store.provider_batches(job.id)[0].remote_status or ""
        assert status.startswith(
            {"openai": "expired", "anthropic": "ended", "gemini": "BATCH_STATE_EXPIRED"}[provider]
        )
        await m.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rejected_rows_fail_alone_and_retryable_ones_stop_at_the_budget(
    provider: str,
) -> None:
    with FakeServer() as server:
        # Every batch expires after its first request: "bad" is answered (rejected) in the
        # first, q1 in the second; q2..q4 expire twice, their budget.
        server.fault("batch_expire", done=1, path=CREATE[provider], times=2)
        m = manager(provider, server, max_attempts=2)
        reqs = requests(provider, 5)
        reqs[0] = JobRequest(id="bad", body=body(provider, f"x {REJECT_MARKER}"))
        job = await m.create_job(reqs)
        job = await m.wait(job.id)
        assert job.status is JobStatus.COMPLETED
        results = {r.id: r for r in await m.get_results(job.id)}
        if provider == "gemini":
            # An expired Gemini batch returns nothing: every request expired twice.
            assert all(
                r.error and r.error["type"] == "ProviderBatchError" for r in results.values()
            )
            assert results["bad"].error["code"] == "missing_output"
        else:
            assert results["bad"].error["type"] == "BadRequestError"
            assert results["bad"].error["status"] == 400
            assert results["q1"].ok
            left = [r for k, r in results.items() if k not in ("bad", "q1")]
            assert all(r.error and r.error["type"] == "ProviderBatchError" for r in left)
            assert {r.error["code"] for r in left} == {
                "openai": {"batch_expired"},
                "anthropic": {"expired"},
            }[provider]
        assert len(creates(server, provider)) == 2
        await m.close()


async def test_openai_batch_failures_are_each_handled() -> None:
    with FakeServer() as server:
        server.fault("status", status=429, retry_after=0.05, path="/v1/batches", times=2)
        server.fault("batch_fail_validation", path="/v1/batches")
        server.fault("batch_status_zero", path="/v1/batches")
        server.fault("batch_token_limit", path="/v1/batches")
        m = manager("openai", server, max_attempts=5)
        job = await m.create_job(requests("openai", 20))
        job = await m.wait(job.id)
        assert job.status is JobStatus.COMPLETED
        results = await m.get_results(job.id)
        # Validation named line 1: that request's own error; the rest went on.
        assert results[0].error == {
            "type": "ProviderBatchError",
            "message": "OpenAI-compatible API error batch: invalid_json_line: This line is not "
            "parseable as valid JSON.",
            "code": "invalid_json_line",
        }
        assert all(r.ok for r in results[1:])
        statuses = [b.remote_status for b in m.store.provider_batches(job.id)]
        assert [s.split(" ")[0] for s in statuses if s] == [
            "failed",
            "completed",
            "failed",
            "completed",
        ]
        assert server.pending_faults() == 0
        await m.close()


async def test_an_oversized_batch_ends_its_requests_with_the_providers_error() -> None:
    with FakeServer() as server:
        server.fault("status", status=413, path="/v1/messages/batches")
        m = manager("anthropic", server, batch_requests=3)
        job = await m.create_job(requests("anthropic", 5))
        job = await m.wait(job.id)
        results = await m.get_results(job.id)
        assert [r.error["status"] if r.error else None for r in results] == [
            413,
            413,
            413,
            None,
            None,
        ]
        assert results[0].error["type"] == "APIStatusError"
        await m.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_a_job_cancels_its_provider_batches(provider: str) -> None:
    with FakeServer(batch_duration=30.0) as server:
        m = manager(provider, server, batch_requests=25)
        job = await m.create_job(requests(provider, 50))
        runner = asyncio.ensure_future(m.wait(job.id))
        for _ in range(200):
            if [b.state for b in m.store.provider_batches(job.id)] == ["created", "created"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(m.store.provider_batches(job.id))
        await m.cancel(job.id)
        job = await asyncio.wait_for(runner, 10)
        assert job.status is JobStatus.CANCELLED
        p = await m.progress(job.id)
        assert (p.pending, p.running, p.cancelled) == (0, 0, 50)
        cancels = [r for r in server.requests() if "cancel" in r["path"]]
        assert len(cancels) == 2
        assert all(b.state == "settled" for b in m.store.provider_batches(job.id))
        await m.close()


async def test_gemini_refuses_chat_fields_it_cannot_translate() -> None:
    with FakeServer() as server:
        m = manager("gemini", server)
        bad = JobRequest(id="t", body={**body("gemini", "x"), "tools": []})
        with pytest.raises(ValueError, match=r"field\(s\) tools have no Gemini batch equivalent"):
            await m.create_job([bad])
        await m.close()


async def test_the_estimate_is_half_price_through_the_batch_api() -> None:
    with FakeServer() as server:
        reqs = [
            JobRequest(id=f"q{i}", body={**body("openai", "x" * 400), "max_tokens": 50})
            for i in range(10)
        ]
        online = JobManager(client("openai", server), JobStore())
        batch = manager("openai", server)
        a, b = online.estimate(reqs), batch.estimate(reqs)
        assert (a.requests, a.input_tokens, a.max_output_tokens) == (10, b.input_tokens, 500)
        assert b.input_tokens >= 1000  # 400 characters a request, about 100 tokens
        assert b.input_cost == pytest.approx(a.input_cost / 2)
        assert b.max_cost == pytest.approx(a.max_cost / 2)
        await online.close()
        await batch.close()


# --- the CLI ---------------------------------------------------------------------------------


def jsonl_lines(provider: str, n: int) -> list[dict[str, Any]]:
    url = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    return [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": url,
            "body": {"model": MODEL[provider], **body(provider, f"q{i}")},
        }
        for i in range(n)
    ]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def cli_args(provider: str, server: FakeServer, src: Path, out: Path, *extra: str) -> list[str]:
    args = ["run", str(src), "-o", str(out), "--base-url", base_url(provider, server)]
    args += ["--api-key-env", "FERROBATCH_TEST_KEY", "--poll-interval", "0.03", *extra]
    if provider == "gemini" and "--batch-api" in extra:
        args += ["--batch-provider", "gemini"]
    return args


def shape(line: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between an online and a batch run: everything but generated ids and
    times."""
    b = line["response"]["body"]
    content = b["content"][0]["text"] if "content" in b else b["choices"][0]["message"]["content"]
    return (line["custom_id"], line["response"]["status_code"], line["error"], sorted(b), content)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_one_jsonl_file_gives_the_same_output_with_and_without_the_batch_api(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERROBATCH_TEST_KEY", "k")
    src = write(tmp_path / "in.jsonl", jsonl_lines(provider, 40))
    with FakeServer() as server:
        online, batch = tmp_path / "online.jsonl", tmp_path / "batch.jsonl"
        assert main(cli_args(provider, server, src, online)) == 0
        assert (
            main(cli_args(provider, server, src, batch, "--batch-api", "--batch-requests", "15"))
            == 0
        )
        a = [json.loads(x) for x in online.read_text().splitlines()]
        b = [json.loads(x) for x in batch.read_text().splitlines()]
        assert [shape(x) for x in a] == [shape(x) for x in b]
        assert len(creates(server, provider)) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_9_right_after_the_create_call_does_not_pay_for_a_second_batch(
    provider: str, tmp_path: Path
) -> None:
    src = write(tmp_path / "in.jsonl", jsonl_lines(provider, 60))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "FERROBATCH_TEST_KEY": "k"}
    with FakeServer() as server:
        # The first create is made, then its answer never comes: the runner is killed while
        # it waits, the batch id unrecorded.
        server.fault("hang", path=CREATE[provider], duration=60)
        args = cli_args(provider, server, src, out, "--batch-api", "--batch-requests", "20")
        cmd = [sys.executable, "-m", "ferrobatch.cli", *args, "--lease-seconds", "1"]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        try:
            for _ in range(500):
                if any(r["fault"] == "hang" for r in server.requests()):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the create call never came")
            time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(10)
        assert len(creates(server, provider)) == 1
        chunks = JobStore(str(out) + ".jobs.db")
        job = chunks.jobs()[0]
        assert chunks.provider_batches(job.id)[0].state == "creating"
        # The same command resumes: the interrupted create is found, not repeated.
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert len(creates(server, provider)) == 3  # one per chunk
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == [f"c{i}" for i in range(60)]
        assert all(x["response"]["status_code"] == 200 for x in lines)


# --- the official SDKs accept the fake server's batch APIs -----------------------------------


def test_the_openai_sdk_speaks_to_the_fake_batch_api() -> None:
    openai = pytest.importorskip("openai")
    with (
        FakeServer(batch_duration=0.1) as server,
        openai.OpenAI(api_key="k", base_url=server.openai_base_url) as c,
    ):
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "m",
                    "messages": [{"role": "user", "content": REJECT_MARKER if i == 0 else "hi"}],
                },
            }
            for i in range(3)
        ]
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        f = c.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        assert (f.bytes, f.purpose) == (len(data), "batch")
        b = c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "j1"},
        )
        assert b.status == "validating" and b.metadata == {"job": "j1"}
        time.sleep(0.2)
        b = c.batches.retrieve(b.id)
        assert b.status == "completed"
        assert (b.request_counts.completed, b.request_counts.failed, b.request_counts.total) == (
            2,
            1,
            3,
        )
        out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        err = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == ["r1", "r2"]
        assert err[0]["response"]["status_code"] == 400
        assert [x.id for x in c.batches.list(limit=10)] == [b.id]
        again = c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert c.batches.cancel(again.id).status == "cancelling"
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_missing")


def test_the_anthropic_sdk_speaks_to_the_fake_message_batches() -> None:
    anthropic = pytest.importorskip("anthropic")
    with (
        FakeServer(batch_duration=0.1) as server,
        anthropic.Anthropic(api_key="k", base_url=server.url) as a,
    ):
        params = {"model": "claude", "max_tokens": 5}
        mb = a.messages.batches.create(
            requests=[
                {
                    "custom_id": "a1",
                    "params": {**params, "messages": [{"role": "user", "content": "hi"}]},
                },
                {
                    "custom_id": "a2",
                    "params": {**params, "messages": [{"role": "user", "content": REJECT_MARKER}]},
                },
            ]
        )
        assert mb.processing_status == "in_progress"
        assert mb.request_counts.succeeded == 0 and mb.results_url is None
        time.sleep(0.2)
        mb = a.messages.batches.retrieve(mb.id)
        assert mb.processing_status == "ended"
        assert (mb.request_counts.succeeded, mb.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result for r in a.messages.batches.results(mb.id)}
        assert results["a1"].type == "succeeded"
        assert results["a1"].message.content[0].text == "fake reply to: hi"
        assert results["a2"].type == "errored"
        assert results["a2"].error.error.type == "invalid_request_error"
        assert [x.id for x in a.messages.batches.list(limit=5)] == [mb.id]
        with pytest.raises(anthropic.BadRequestError, match="custom_id"):
            a.messages.batches.create(
                requests=[{"custom_id": "not ok!", "params": {**params, "messages": []}}]
            )
        mb2 = a.messages.batches.create(
            requests=[
                {
                    "custom_id": "x",
                    "params": {**params, "messages": [{"role": "user", "content": "hi"}]},
                },
            ]
        )
        assert a.messages.batches.cancel(mb2.id).processing_status == "canceling"


def test_the_google_genai_sdk_speaks_to_the_fake_batch_mode() -> None:
    genai = pytest.importorskip("google.genai")
    with FakeServer(batch_duration=0.1) as server:
        c = genai.Client(
            api_key="k", http_options={"base_url": server.url, "api_version": "v1beta"}
        )
        src = [
            {"contents": [{"parts": [{"text": "hi"}], "role": "user"}]},
            {"contents": [{"parts": [{"text": REJECT_MARKER}], "role": "user"}]},
        ]
        job = c.batches.create(model="gemini-2.5-flash", src=src, config={"display_name": "probe"})
        assert job.display_name == "probe"
        assert job.state.name == "JOB_STATE_PENDING"
        time.sleep(0.2)
        job = c.batches.get(name=job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED"  # with a failed row, as Gemini does
        rows = job.dest.inlined_responses
        assert rows[0].response.text == "fake reply to: hi"
        assert rows[1].error.code == 3
        assert [b.name for b in c.batches.list(config={"page_size": 10})] == [job.name]
        other = c.batches.create(model="gemini-2.5-flash", src=src[:1])
        c.batches.cancel(name=other.name)
        assert c.batches.get(name=other.name).state.name == "JOB_STATE_CANCELLED"


async def test_stragglers_go_online_at_full_price_when_asked() -> None:
    with FakeServer() as server:
        server.fault("batch_expire", done=100, path="/v1/batches")
        m = manager("openai", server, fallback_online=True)
        job = await m.create_job(requests("openai", 300))
        job = await m.wait(job.id)
        assert job.status is JobStatus.COMPLETED
        assert len(creates(server, "openai")) == 1
        online = [r for r in server.requests("/v1/chat/completions") if r["method"] == "POST"]
        assert len(online) == 200
        results = await m.get_results(job.id)
        assert all(r.ok for r in results)
        price = PRICES["gpt-4o-mini"]

        def cost(rs: list[Any]) -> float:
            tokens = [usage_of("openai", r.response) for r in rs]
            return sum(i * price["input"] + o * price["output"] for i, o in tokens) / 1e6

        p = await m.progress(job.id)
        assert p.cost == pytest.approx(cost(results[:100]) / 2 + cost(results[100:]))
        await m.close()


def test_a_job_submitted_for_the_batch_api_is_worked_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERROBATCH_TEST_KEY", "k")
    src = write(tmp_path / "in.jsonl", jsonl_lines("anthropic", 30))
    store = str(tmp_path / "jobs.db")
    with FakeServer() as server:
        assert main(["submit", str(src), "--store", store, "--batch-api"]) == 0
        work = ["work", "--store", store, "--base-url", server.anthropic_base_url]
        work += ["--api-key-env", "FERROBATCH_TEST_KEY", "--poll-interval", "0.03", "--until-idle"]
        assert main(work) == 0
        assert len(creates(server, "anthropic")) == 1
        assert [r for r in server.requests() if r["path"] == "/v1/messages"] == []  # none online
        job = JobStore(store).jobs()[0]
        assert job.status is JobStatus.COMPLETED


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_rejected_row_fails_alone_in_a_batch_that_succeeds(provider: str) -> None:
    # Gemini reports such a batch BATCH_STATE_SUCCEEDED; the row carries its own error.
    with FakeServer() as server:
        m = manager(provider, server)
        reqs = requests(provider, 6)
        reqs[2] = JobRequest(id="bad", body=body(provider, f"x {REJECT_MARKER}"))
        job = await m.create_job(reqs)
        job = await m.wait(job.id)
        results = {r.id: r for r in await m.get_results(job.id)}
        assert results["bad"].error["type"] == "BadRequestError"
        assert results["bad"].error["status"] == 400
        assert all(r.ok for k, r in results.items() if k != "bad")
        assert len(creates(server, provider)) == 1  # a permanent error is not retried
        status = m.store.provider_batches(job.id)[0].remote_status or ""
        assert status.endswith("(5 succeeded, 1 failed of 6)"), status
        await m.close()
