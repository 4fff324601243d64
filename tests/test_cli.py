"""The `ferrobatch` command against the shipped fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ferrobatch.cli import main
from ferrobatch.testing import FakeServer


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def chat_line(i: int, **extra: Any) -> dict[str, Any]:
    line = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
    }
    line.update(extra)
    return line


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_round_trip_and_rerun_resumes(
    tmp_path: Path, fake_ai_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(30)])
    out = tmp_path / "out.jsonl"
    args = ["run", str(src), "-o", str(out), "--base-url", fake_ai_server.openai_base_url]
    assert main(args) == 0
    lines = read_jsonl(out)
    assert [ln["custom_id"] for ln in lines] == [f"req-{i}" for i in range(30)]
    assert [ln["id"] for ln in lines] == [f"batch_req_{i}" for i in range(30)]
    first = lines[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "fake reply to: q0"
    assert (tmp_path / "out.jsonl.jobs.db").exists()
    assert fake_ai_server.request_count() == 30
    # The same command again finds the finished job: nothing is sent twice.
    assert main(args) == 0
    assert fake_ai_server.request_count() == 30
    assert read_jsonl(out) == lines
    err = capsys.readouterr().err
    assert "already completed" in err


def test_jobs_status_cancel_results_commands(
    tmp_path: Path, fake_ai_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(5)])
    out = tmp_path / "out.jsonl"
    store = str(tmp_path / "s.db")
    base = fake_ai_server.openai_base_url
    assert main(["run", str(src), "-o", str(out), "--base-url", base, "--store", store]) == 0
    capsys.readouterr()
    assert main(["jobs", "--store", store]) == 0
    listing = capsys.readouterr().out
    job_id = listing.splitlines()[1].split()[0]
    assert "completed" in listing and "5/5" in listing
    assert main(["status", job_id, "--store", store]) == 0
    assert "succeeded  5" in capsys.readouterr().out
    assert main(["results", job_id, "--store", store]) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert printed == read_jsonl(out)
    assert main(["cancel", job_id, "--store", store]) == 0  # a finished job: nothing to cancel
    assert "0 pending" in capsys.readouterr().out
    assert main(["status", "batch_nope", "--store", store]) == 1
    assert 'no job "batch_nope"' in capsys.readouterr().err
    assert main(["jobs"]) == 2
    assert "--store" in capsys.readouterr().err


def test_embeddings_file(tmp_path: Path, fake_ai_server: FakeServer) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": [f"a{i}", f"b{i}"],
                "dimensions": 8,
            },
        }
        for i in range(10)
    ]
    src = write_jsonl(tmp_path / "emb.jsonl", lines)
    out = tmp_path / "emb-out.jsonl"
    assert (
        main(["run", str(src), "-o", str(out), "--base-url", fake_ai_server.openai_base_url]) == 0
    )
    res = read_jsonl(out)
    assert all(len(r["response"]["body"]["data"]) == 2 for r in res)
    assert len(res[0]["response"]["body"]["data"][0]["embedding"]) == 8
    assert fake_ai_server.requests()[0]["body"]["dimensions"] == 8


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([chat_line(0), "{not json"], "in.jsonl:2: not valid JSON"),
        ([chat_line(0), chat_line(1, method="GET")], 'in.jsonl:2: unsupported method "GET"'),
        ([chat_line(0, url="/v1/completions")], 'in.jsonl:1: unsupported url "/v1/completions"'),
        (
            [chat_line(0), chat_line(1), chat_line(0)],
            'in.jsonl:3: duplicate custom_id "req-0" (first on line 1)',
        ),
        (
            [
                chat_line(0),
                {
                    "custom_id": "x",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"input": "t"},
                },
            ],
            'in.jsonl:2: url "/v1/embeddings" differs',
        ),
        (
            [{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}],
            "in.jsonl:1: `messages` must be a list",
        ),
        ([{"method": "POST"}], "in.jsonl:1: `custom_id` must be a non-empty string"),
        (
            [{"custom_id": "x", "url": "/v1/embeddings", "body": {"input": "t", "dims": 3}}],
            "in.jsonl:1: unsupported embeddings field(s): dims",
        ),
    ],
)
def test_bad_input_names_the_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[Any], message: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["run", str(src), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_byte_order_mark_and_line_separators_inside_strings_are_accepted(
    tmp_path: Path, fake_ai_server: FakeServer
) -> None:
    lines = [chat_line(0), chat_line(1)]
    lines[1]["body"]["messages"][0]["content"] = "one\u2028two"
    text = "".join(json.dumps(ln, ensure_ascii=False) + "\r\n" for ln in lines)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    out = tmp_path / "out.jsonl"
    assert (
        main(["run", str(src), "-o", str(out), "--base-url", fake_ai_server.openai_base_url]) == 0
    )
    assert [ln["custom_id"] for ln in read_jsonl(out)] == ["req-0", "req-1"]
    sent = [r["body"]["messages"][0]["content"] for r in fake_ai_server.requests()]
    assert sorted(sent) == ["one\u2028two", "q0"]


def test_invalid_utf8_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(chat_line(0)).encode() + b"\n" + b'{"custom_id": "\xff"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["run", str(src), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "in.jsonl:2: not valid UTF-8" in capsys.readouterr().err


def test_a_missing_key_for_the_official_endpoint_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(0)])
    out = tmp_path / "out.jsonl"
    code = main(["run", str(src), "-o", str(out), "--base-url", "https://api.openai.com/v1"])
    assert code == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    with FakeServer(latency=0.05) as server:
        src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(300)])
        out = tmp_path / "out.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "ferrobatch.cli",
            "run",
            str(src),
            "-o",
            str(out),
            "--base-url",
            server.openai_base_url,
            "--concurrency",
            "4",
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while server.request_count() < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        assert not out.exists()
        first = server.request_count()
        assert first < 300
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert rerun.returncode == 0, rerun.stderr
        assert "resuming" in rerun.stderr
        assert len(read_jsonl(out)) == 300
        counts: dict[str, int] = {}
        for r in server.requests():
            c = r["body"]["messages"][0]["content"]
            counts[c] = counts.get(c, 0) + 1
        assert set(counts) == {f"q{i}" for i in range(300)}
        # Only requests in flight at the interrupt may have been sent twice.
        assert sum(counts.values()) - 300 <= 16


def test_demo_runs_against_the_fake_server() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ferrobatch.cli", "demo", "--n", "400"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "FAKE server" in out.stdout
    assert "(0 lost)" in out.stdout
    assert "batching saved" in out.stdout
    assert "completed, 100 / 100" in out.stdout


def test_submit_then_work_then_results_on_a_sqlite_store(
    tmp_path: Path, fake_ai_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(30)])
    store = str(tmp_path / "jobs.db")
    assert main(["submit", str(src), "--store", store, "--name", "nightly"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("batch_")
    assert fake_ai_server.request_count() == 0  # submit sends nothing
    assert main(["status", job_id, "--store", store]) == 0
    assert "pending" in capsys.readouterr().out
    # A second file lands in the same store; one worker runs both until none is left.
    other = write_jsonl(tmp_path / "other.jsonl", [chat_line(i) for i in range(30, 40)])
    assert main(["submit", str(other), "--store", store]) == 0
    other_id = capsys.readouterr().out.strip()
    base = ["--store", store, "--base-url", fake_ai_server.openai_base_url]
    assert main(["work", *base, "--until-idle", "--flush-interval", "0"]) == 0
    assert fake_ai_server.request_count() == 40
    out = tmp_path / "out.jsonl"
    assert main(["results", job_id, "--store", store, "-o", str(out)]) == 0
    lines = read_jsonl(out)
    assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(30)]
    assert lines[3]["response"]["body"]["choices"][0]["message"]["content"] == "fake reply to: q3"
    capsys.readouterr()
    assert main(["results", other_id, "--store", store]) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["custom_id"] for x in printed] == [f"req-{i}" for i in range(30, 40)]
    assert main(["work", *base, "--until-idle", "--job", "batch_missing"]) == 0
    assert main(["submit", str(src), "--store", str(tmp_path / "x.db")]) == 0  # creates it
    assert main(["work", "--base-url", fake_ai_server.openai_base_url]) == 2  # no store


def test_sigterm_stops_a_worker_and_hands_its_claims_back(tmp_path: Path) -> None:
    from ferrobatch.jobs import JobStore

    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(200)])
    store_path = str(tmp_path / "jobs.db")
    assert main(["submit", str(src), "--store", store_path]) == 0
    with FakeServer(latency=0.2) as server:
        cmd = [sys.executable, "-m", "ferrobatch.cli", "work", "--store", store_path]
        cmd += ["--base-url", server.openai_base_url, "--concurrency", "4"]
        worker = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            store = JobStore(store_path)
            job = store.jobs()[0]
            deadline = time.monotonic() + 30
            while not store.held_by(job.id):
                assert time.monotonic() < deadline, "the worker claimed nothing"
                time.sleep(0.02)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        p = store.progress(job.id)
        assert store.held_by(job.id) == {} and p.running == 0
        assert p.pending == 200 - p.done > 0  # handed back at once, not after a lease


def test_a_rerun_on_the_same_machine_takes_a_killed_run_over_at_once(tmp_path: Path) -> None:
    """After kill -9, the rerun sees the dead run's process is gone on this machine: it takes
    its requests over at once (and says so) instead of waiting out the 60 s lease."""
    with FakeServer(latency=0.05) as server:
        src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(200)])
        out = tmp_path / "out.jsonl"
        cmd = [sys.executable, "-m", "ferrobatch.cli", "run", str(src), "-o", str(out)]
        cmd += ["--base-url", server.openai_base_url, "--concurrency", "4"]
        cmd += ["--lease-seconds", "60", "--flush-interval", "0"]
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while server.request_count() < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=10)
        started = time.monotonic()
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        took = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        assert "took over runner_" in rerun.stderr, rerun.stderr
        assert "process" in rerun.stderr and "is gone" in rerun.stderr
        assert len(read_jsonl(out)) == 200
        # Not a timing goal: the lease is 60 s and the rerun did not wait for it.
        assert took < 55, took


def test_cache_stats_and_clear(
    tmp_path: Path, fake_ai_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from ferrobatch import Cache
    from ferrobatch.openai import Embeddings

    db = tmp_path / "cache.db"

    async def fill() -> None:
        emb = Embeddings(base_url=fake_ai_server.openai_base_url, api_key="k", cache=Cache(str(db)))
        await emb.embed_many(["a", "b", "c"])
        await emb.stop()

    asyncio.run(fill())
    assert main(["cache", "stats", str(db)]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert main(["cache", "stats", str(db), "--namespace", "other"]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert main(["cache", "clear", f"sqlite:///{db}"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    assert main(["cache", "stats", str(db)]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert main(["cache", "stats", "ftp://x"]) == 1  # a typed error, named
    assert "unknown scheme" in capsys.readouterr().err


def strip_ids(lines: list[dict[str, Any]]) -> list[Any]:
    """What a result line says, apart from its ids (a new job numbers its requests anew)."""
    return [(ln["custom_id"], ln["response"]["body"], ln["error"]) for ln in lines]


def test_run_and_work_with_a_cache_send_only_what_was_never_answered(
    tmp_path: Path, fake_ai_server: FakeServer
) -> None:
    cache = str(tmp_path / "cache.db")
    base = ["--base-url", fake_ai_server.openai_base_url, "--cache", cache]
    chat = write_jsonl(tmp_path / "chat.jsonl", [chat_line(i) for i in range(20)])
    out1, out2 = tmp_path / "out1.jsonl", tmp_path / "out2.jsonl"
    assert main(["run", str(chat), "-o", str(out1), *base]) == 0
    assert fake_ai_server.request_count() == 20
    # Another job (another store) over the same requests: nothing is sent, the same results.
    assert main(["run", str(chat), "-o", str(out2), "--store", str(tmp_path / "s2.db"), *base]) == 0
    assert fake_ai_server.request_count() == 20
    assert strip_ids(read_jsonl(out2)) == strip_ids(read_jsonl(out1))

    # The file edited: 2 of 20 requests changed, one added; a worker sends those 3 only.
    edited = [chat_line(i) for i in range(21)]
    for i in (4, 9):
        edited[i]["body"]["temperature"] = 0.5
    src = write_jsonl(tmp_path / "edited.jsonl", edited)
    store = str(tmp_path / "jobs.db")
    assert main(["submit", str(src), "--store", store]) == 0
    fake_ai_server.clear_requests()
    assert main(["work", "--store", store, *base, "--until-idle", "--flush-interval", "0"]) == 0
    sent = sorted(r["body"]["messages"][0]["content"] for r in fake_ai_server.requests())
    assert sent == ["q20", "q4", "q9"]

    # Embeddings: each text cached on its own, so a request sharing texts sends the rest.
    def emb(i: int, texts: list[str]) -> dict[str, Any]:
        body = {"model": "text-embedding-3-small", "input": texts, "dimensions": 8}
        return {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": body}

    first = write_jsonl(tmp_path / "e1.jsonl", [emb(0, ["a", "b"]), emb(1, ["c"])])
    assert main(["run", str(first), "-o", str(tmp_path / "e1.out"), *base]) == 0
    fake_ai_server.clear_requests()
    second = write_jsonl(tmp_path / "e2.jsonl", [emb(0, ["a", "b", "d"]), emb(1, ["c"])])
    assert main(["run", str(second), "-o", str(tmp_path / "e2.out"), *base]) == 0
    sent = [t for r in fake_ai_server.requests("/embeddings") for t in r["body"]["input"]]
    assert sent == ["d"]
    vectors = read_jsonl(tmp_path / "e2.out")[0]["response"]["body"]["data"]
    assert [len(v["embedding"]) for v in vectors] == [8, 8, 8]
