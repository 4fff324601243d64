"""The `ferrobatch` command: run OpenAI Batch API JSONL files against any OpenAI-compatible
endpoint with a crash-safe store, on one machine or with workers on many hosts; inspect and
cancel jobs; a demo against the fake server.

    ferrobatch demo
    ferrobatch run requests.jsonl -o results.jsonl --base-url https://api.openai.com/v1
    ferrobatch run requests.jsonl -o results.jsonl --base-url URL --batch-api   (half price)
    ferrobatch submit requests.jsonl --store postgresql://...      (prints the job id)
    ferrobatch work --store postgresql://... --base-url URL --until-idle   (on each host)
    ferrobatch results JOB --store ... -o results.jsonl
    ferrobatch jobs --store ...   ferrobatch status JOB --store ...   ferrobatch cancel JOB ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrobatch._native import (
    Cache,
    InvalidInputError,
    JobInput,
    JobWorker,
    RateLimiter,
    detect_provider,
    provider_facts,
    read_job_input,
)
from ferrobatch.jobs import (
    Job,
    JobManager,
    JobRequest,
    JobStore,
    ProgressReporter,
    batch_api_options,
    store_input,
)


def key_env(args: argparse.Namespace, endpoint: str) -> str:
    """--api-key-env, else the first set of the provider's variables (the registry's, in the
    official SDK's order), else its first."""
    if args.api_key_env:
        return str(args.api_key_env)
    name = getattr(args, "batch_provider", None) or detect_provider(
        endpoint, getattr(args, "base_url", None)
    )
    names: list[str] = provider_facts(name)["key_env"]
    return next((n for n in names if os.environ.get(n)), names[0])


def parse_prices(values: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """`--price MODEL=INPUT,OUTPUT` (USD per 1M tokens), repeatable."""
    prices: dict[str, dict[str, float]] = {}
    for v in values or ():
        model, _, rates = v.partition("=")
        parts = rates.split(",")
        try:
            if not model or len(parts) != 2:
                raise ValueError
            prices[model] = {"input": float(parts[0]), "output": float(parts[1])}
        except ValueError:
            raise CliError(
                f"--price {v!r}: expected MODEL=INPUT,OUTPUT in USD per 1M tokens"
            ) from None
    return prices


def batch_options(args: argparse.Namespace, job: Job | None = None) -> dict[str, Any]:
    """JobManager keywords of --batch-api and its options (none without it), for `job` when
    given: a job submitted with --batch-api goes through the batch API too."""
    submitted = job.settings.get("via") == "batch-api" if job is not None else False
    if not (getattr(args, "batch_api", False) or submitted):
        return {}
    provider = args.batch_provider
    if provider is None and job is not None:
        provider = job.settings.get("batch_provider")
    return {
        "via": "batch-api",
        "batch_provider": provider,
        "fallback_online": bool(args.fallback_online),
        "poll_interval": args.poll_interval,
        "max_attempts": args.max_attempts,
        "batch_requests": args.batch_requests,
        "batch_bytes": args.batch_bytes,
    }


class CliError(Exception):
    """A problem with the command's input; printed without a traceback (exit code 2)."""


# --- the JSONL format -------------------------------------------------------------------------


def read_input(path: Path, args: argparse.Namespace) -> JobInput:
    """An OpenAI Batch API input file, read and checked by the core (every line before
    anything is written; the first problem names its line)."""
    try:
        return read_job_input(
            path,
            str(path),
            batch_api=bool(getattr(args, "batch_api", False)),
            batch_provider=getattr(args, "batch_provider", None),
            base_url=getattr(args, "base_url", None),
        )
    except InvalidInputError as e:
        raise CliError(e.reason) from None


def write_results(store: JobStore, job_id: str, out: Path | None) -> None:
    """Write the job's results in the OpenAI Batch API output format (in Rust, without a
    Python object per line); a file is replaced atomically, never left half-written."""
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(store.results_jsonl(job_id))
        sys.stdout.flush()
    else:
        store.write_results(job_id, out)


# --- commands ---------------------------------------------------------------------------------


def shared_bucket(base_url: str, key: str | None) -> str:
    """The Redis bucket every process with this endpoint and key shares: the key only hashed."""
    digest = hashlib.sha256(f"{base_url}\0{key or ''}".encode()).hexdigest()[:24]
    return f"cli:{digest}"


def shared_limiter(args: argparse.Namespace, base_url: str, key_var: str | None) -> Any:
    """The --rpm/--tpm limit, shared through Redis with --redis (None without a limit)."""
    redis_url = args.redis or os.environ.get("FERROBATCH_REDIS") or None
    if redis_url and not (args.rpm or args.tpm):
        raise CliError("--redis shares a limit: give --rpm and/or --tpm too")
    if not (args.rpm or args.tpm):
        return None
    key = os.environ.get(key_var) if key_var else None
    return RateLimiter(
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        redis_url=redis_url,
        name=shared_bucket(base_url, key) if redis_url else None,
    )


def make_client(endpoint: str, settings: dict[str, Any], args: argparse.Namespace) -> Any:
    from ferrobatch.anthropic import Messages
    from ferrobatch.openai import ChatCompletions, Embeddings

    key = os.environ.get(settings["api_key_env"]) if settings.get("api_key_env") else None
    limiter = shared_limiter(args, settings["base_url"], settings.get("api_key_env"))
    cache = open_cache(args)
    common: dict[str, Any] = {
        "base_url": settings["base_url"],
        "api_key": key,
        "concurrency": args.concurrency,
        "rate_limiter": limiter,
        "prices": parse_prices(getattr(args, "price", None)) or None,
    }
    if endpoint == "/v1/embeddings":
        return Embeddings(
            settings.get("model") or "text-embedding-3-small",
            dimensions=settings.get("dimensions"),
            cache=cache,
            **common,
        )
    if endpoint == "/v1/messages":
        return Messages(settings.get("model") or "default", cache=cache, **common)
    return ChatCompletions(settings.get("model") or "default", cache=cache, **common)


def open_cache(args: argparse.Namespace) -> Cache | None:
    """The result cache of --cache / FERROBATCH_CACHE (None without one)."""
    location = getattr(args, "cache", None) or os.environ.get("FERROBATCH_CACHE")
    return Cache(location) if location else None


async def cmd_run(args: argparse.Namespace) -> int:
    src, out = Path(args.input), Path(args.output)
    source = read_input(src, args)
    endpoint = source.endpoint
    store_path = args.store or os.environ.get("FERROBATCH_STORE") or str(out) + ".jobs.db"
    settings = {**job_settings(args, source, src), "output": str(out)}
    client = make_client(endpoint, settings, args)  # before the store: a bad setting writes nothing
    store = JobStore(store_path)
    existing = store.find_by_input(source.input_hash)
    manager = JobManager(
        client,
        store,
        lease_seconds=args.lease_seconds,
        flush_interval=args.flush_interval,
        **batch_options(args),
    )
    if args.estimate:
        try:
            print_estimate(manager.estimate(source))
        finally:
            await manager.close()
            await client.stop()
        return 0
    try:
        if existing is None:
            job = store.job(store_input(store, source, src.name, settings))
            print(f"job {job.id}: {job.total} requests, store {store_path}", file=sys.stderr)
        else:
            job = existing
            if not job.status.is_terminal:
                print(f"job {job.id}: found in {store_path}; resuming", file=sys.stderr)
        if job.status.is_terminal:
            print(
                f"job {job.id} is already {job.status.value}; writing its results", file=sys.stderr
            )
        else:
            before = store.progress(job.id)
            reporter = ProgressReporter(job.total, already=before.done, every=2.0)
            job = await manager.wait(job.id, progress=reporter, poll=0.1)
        await asyncio.to_thread(write_results, store, job.id, out)
        p = await manager.progress(job.id)
        print(
            f"job {job.id} {job.status.value}: {p.succeeded} succeeded, {p.failed} failed, "
            f"{p.cancelled} cancelled; results in {out}",
            file=sys.stderr,
        )
        if job.error:
            print(f"job error: {job.error}", file=sys.stderr)
        return 1 if job.status.value == "failed" else 0
    finally:
        await manager.close()
        await client.stop()


def print_estimate(e: Any) -> None:
    """A CostEstimate, one fact a line."""
    where = "the batch API (half price)" if e.batch_api else "the online API"
    print(f"{e.requests} requests through {where}")
    print(f"  input tokens   ~{e.input_tokens} (estimated from the text)")
    print(f"  output tokens  at most {e.max_output_tokens} (max_tokens)")
    if e.max_cost is None:
        print("  cost           unknown: give --price MODEL=INPUT,OUTPUT for every model")
    else:
        print(
            f"  cost           ${e.input_cost:.6f} input + at most ${e.max_output_cost:.6f} output"
        )


def store_location(args: argparse.Namespace) -> str:
    location = args.store or os.environ.get("FERROBATCH_STORE")
    if not location:
        raise CliError("which store? pass --store PATH_OR_DSN (or set FERROBATCH_STORE)")
    return str(location)


def open_store(args: argparse.Namespace, create: bool = False) -> JobStore:
    """The store of --store / FERROBATCH_STORE: a SQLite path (which must exist unless
    `create`) or a postgresql:// DSN."""
    location = store_location(args)
    is_dsn = location.startswith(("postgresql://", "postgres://"))
    if not is_dsn and not create and not Path(location).exists():
        raise CliError(f"no store at {location}")
    return JobStore(location)


def job_settings(args: argparse.Namespace, source: JobInput, src: Path) -> dict[str, Any]:
    """A job's non-secret settings: where it goes, which model, the key's variable name."""
    return {
        "base_url": args.base_url,
        "api_key_env": key_env(args, source.endpoint),
        "model": source.model,
        "dimensions": source.dimensions,
        "input": str(src),
    }


def cmd_submit(args: argparse.Namespace) -> int:
    """Store a job for `ferrobatch work` to run: the file is read and checked by the core and
    written to the store; nothing is sent."""
    src = Path(args.input)
    source = read_input(src, args)
    store = open_store(args, create=True)
    settings = job_settings(args, source, src)
    if args.batch_api:
        settings.update(via="batch-api", batch_provider=args.batch_provider)
    job = store.job(store_input(store, source, args.name or src.name, settings))
    print(f"{job.id}: {job.total} requests, store {store.path}", file=sys.stderr)
    print(job.id)
    return 0


async def cmd_work(args: argparse.Namespace) -> int:
    """The core's worker loop in one native call: a client per endpoint, model and route,
    made from each job's settings as needed; store outages waited out; a job's error logged
    and the worker goes on. Exits when stopped (SIGTERM, Ctrl-C) or, with --until-idle, once
    no job is left (1 if a job could not be run)."""
    store = open_store(args)
    limiter = shared_limiter(args, args.base_url, args.api_key_env)
    worker = JobWorker(
        store._native,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        rate_limiter=limiter,
        prices=parse_prices(getattr(args, "price", None)) or None,
        lease_seconds=args.lease_seconds,
        flush_interval=args.flush_interval,
        host=socket.gethostname(),
        batch_api=batch_api_options(**batch_options(args)),
        cache=open_cache(args),
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def stop() -> None:
        if not stopping:
            stopping.append(worker.stop())

    loop.add_signal_handler(signal.SIGTERM, stop)
    print(f"worker on {store.path}", file=sys.stderr, flush=True)
    try:
        errors = await worker.work(args.job, args.until_idle)
    except asyncio.CancelledError:  # Ctrl-C: hand everything back before leaving
        stop()
        await stopping[0]
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    if stopping:
        await stopping[0]
    else:
        await worker.stop()
    return 1 if errors else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    store = open_store(args)
    jobs = store.jobs()
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'job':<31} {'status':<11} {'done':>13}  name")
    for j in jobs:
        p = store.progress(j.id)
        print(f"{j.id:<31} {j.status.value:<11} {p.done:>6}/{p.total:<6}  {j.name or ''}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    j = store.job(args.job)
    p = store.progress(args.job)
    print(f"job {j.id} ({j.name or 'unnamed'}): {j.status.value}")
    if j.error:
        print(f"error: {j.error}")
    for k in ("total", "pending", "running", "succeeded", "failed", "cancelled"):
        print(f"  {k:<10} {getattr(p, k)}")
    print(f"  tokens     {p.input_tokens} in, {p.output_tokens} out")
    for runner, n in store.held_by(args.job).items():
        print(f"  held by    {runner}: {n}")
    for b in store.provider_batches(args.job):
        print(
            f"  batch {b.number:<4} {b.provider} {b.batch_id or '(not created yet)'}: {b.state}"
            f"{', ' + b.remote_status if b.remote_status else ''}; {b.requests} requests"
        )
    if p.cost is not None:
        print(f"  cost       ${p.cost:.6f}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    store = open_store(args)
    n = store.cancel(args.job)
    print(f"job {args.job} cancelled; {n} pending requests will not be sent")
    if any(b.state != "settled" for b in store.provider_batches(args.job)):
        print(
            "its provider batches are cancelled by the worker running the job (or the next "
            "`run`/`work` on it); what they finished is kept"
        )
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    write_results(open_store(args), args.job, Path(args.output) if args.output else None)
    return 0


# --- demo -------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else 0.0


async def timed(aw: Any, latencies: list[float]) -> Any:
    t0 = time.perf_counter()
    try:
        return await aw
    finally:
        latencies.append(time.perf_counter() - t0)


def cmd_cache(args: argparse.Namespace) -> int:
    cache = Cache(args.location, namespace=args.namespace)
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.location}")
    else:
        print(f"{cache.location}: {cache.entries()} entries")
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from ferrobatch.openai import ChatCompletions, Embeddings
    from ferrobatch.testing import FakeServer

    fake = args.base_url is None
    server = FakeServer(latency=0.02) if fake else None
    base_url = server.openai_base_url if server else args.base_url
    key = os.environ.get(args.api_key_env) if not fake else "demo-key"
    n_emb, n_chat, n_job = (args.n, args.n // 5, args.n // 4) if fake else (20, 5, 5)
    rows: list[tuple[str, str]] = []
    label = "the local FAKE server (no real API called)" if fake else base_url
    print(f"ferrobatch demo against {label}\n", flush=True)
    try:
        # 1. Embeddings: one request per batch instead of one per text.
        emb = Embeddings(
            args.model, base_url=base_url, api_key=key, max_batch_size=256, concurrency=8
        )
        lat: list[float] = []
        texts = [f"demo text {i}: batching saves requests" for i in range(n_emb)]
        t0 = time.perf_counter()
        vectors = await asyncio.gather(*[timed(emb.embed(t), lat) for t in texts])
        wall = time.perf_counter() - t0
        u = emb.usage()[args.model]
        sent = u["requests"] + u["retries"]
        rows.append(("embeddings: texts embedded", f"{len(vectors)} in {wall:.2f}s"))
        rows.append(
            ("embeddings: HTTP requests", f"{sent} (batching saved {n_emb - sent} requests)")
        )
        rows.append(
            ("embeddings: p50 / p99 latency", f"{pct(lat, 0.5):.1f} / {pct(lat, 0.99):.1f} ms")
        )
        await emb.stop()

        # 2. Chat under injected faults: every request still ends with its answer.
        chat = ChatCompletions(
            args.chat_model,
            base_url=base_url,
            api_key=key,
            concurrency=16,
            initial_backoff=0.05,
            max_retries=8,
        )
        if server is not None:
            server.fault("status", status=429, times=n_chat // 10, retry_after_ms=50)
            server.fault("status", status=500, times=n_chat // 20)
            server.fault("reset", times=n_chat // 40)
        lat = []
        msgs = [[{"role": "user", "content": f"question {i}"}] for i in range(n_chat)]
        answers = await asyncio.gather(
            *[timed(chat.create(messages=m), lat) for m in msgs], return_exceptions=True
        )
        ok = sum(1 for a in answers if not isinstance(a, BaseException))
        cu = chat.usage()[args.chat_model]
        rows.append(("chat: answered / sent", f"{ok} / {n_chat} ({n_chat - ok} lost)"))
        rows.append(("chat: retries survived (429, 500, reset)", str(cu["retries"])))
        rows.append(("chat: p50 / p99 latency", f"{pct(lat, 0.5):.1f} / {pct(lat, 0.99):.1f} ms"))

        # 3. A batch job in a SQLite store.
        with tempfile.TemporaryDirectory() as tmp:
            store = JobStore(Path(tmp) / "demo-jobs.db")
            async with JobManager(chat, store) as manager:
                reqs = [
                    JobRequest(
                        id=f"r{i}",
                        body={"messages": [{"role": "user", "content": f"job item {i}"}]},
                    )
                    for i in range(n_job)
                ]
                t0 = time.perf_counter()
                job = await manager.create_job(reqs, name="demo")
                job = await manager.wait(job.id)
                p = await manager.progress(job.id)
                took = time.perf_counter() - t0
                rows.append(
                    (
                        "job: status, succeeded / total",
                        f"{job.status.value}, {p.succeeded} / {p.total} in {took:.2f}s",
                    )
                )
        await chat.stop()
    finally:
        if server is not None:
            server.stop()
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}   result ({'fake server' if fake else 'real endpoint'})")
    for k, v in rows:
        print(f"{k:<{width}}   {v}")
    if fake:
        print("\nAll numbers above come from the local fake server (fake embeddings and replies).")
    return 0


# --- entry point ------------------------------------------------------------------------------


def add_runner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="a dead worker's requests are taken over after this long (default 60)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.1,
        help="seconds results wait before they are recorded in one write; 0 records each "
        "on its own (default 0.1)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="LOCATION",
        help="a result cache (a SQLite file, sqlite:///path, redis://... or postgresql://...; "
        "or set FERROBATCH_CACHE): requests answered before complete without being sent, "
        "and what is received is stored (online sending only)",
    )


def add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-api",
        action="store_true",
        help="send through the provider's batch API: half price, answers within 24 h",
    )
    p.add_argument(
        "--batch-provider",
        choices=("openai", "anthropic", "gemini"),
        default=None,
        help="whose batch API (default: anthropic for /v1/messages, gemini for a "
        "googleapis.com base URL, else openai)",
    )
    p.add_argument(
        "--poll-interval", type=float, default=None, help="seconds between polls of a batch"
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="batches a request may go through before a retryable error is its result",
    )
    p.add_argument(
        "--fallback-online",
        action="store_true",
        help="send what a batch did not run (expired, ...) online at once, at full price",
    )
    p.add_argument("--batch-requests", type=int, default=None, help="most requests a batch")
    p.add_argument("--batch-bytes", type=int, default=None, help="most bytes a batch")
    p.add_argument(
        "--price",
        action="append",
        default=None,
        metavar="MODEL=IN,OUT",
        help="USD per 1M input and output tokens of a model, for costs (repeatable)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferrobatch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an OpenAI Batch API JSONL file (rerun to resume)")
    run.add_argument("input", help="requests in the OpenAI Batch API JSONL format")
    run.add_argument("-o", "--output", required=True, help="results JSONL (written at the end)")
    run.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    run.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the key (the key is never stored; default "
        "OPENAI_API_KEY, or ANTHROPIC_API_KEY for /v1/messages)",
    )
    run.add_argument("--rpm", type=float, default=None, help="requests per minute budget")
    run.add_argument("--tpm", type=float, default=None, help="tokens per minute budget")
    run.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="share --rpm/--tpm with every process using this endpoint and key, through Redis "
        "(or set FERROBATCH_REDIS)",
    )
    run.add_argument("--concurrency", type=int, default=16)
    run.add_argument(
        "--store",
        default=None,
        help="job store: a SQLite path or a postgresql:// DSN (or set FERROBATCH_STORE; "
        "default: OUTPUT.jobs.db)",
    )
    add_runner_options(run)
    add_batch_options(run)
    run.add_argument(
        "--estimate",
        action="store_true",
        help="print the requests' estimated tokens and cost, send nothing",
    )

    submit = sub.add_parser("submit", help="store a job from a JSONL file; prints its id")
    submit.add_argument("input", help="requests in the OpenAI Batch API JSONL format")
    submit.add_argument("--store", default=None, help="SQLite path or postgresql:// DSN")
    submit.add_argument("--name", default=None, help="the job's name (default: the file name)")
    submit.add_argument("--base-url", default=None, help="recorded with the job (optional)")
    submit.add_argument(
        "--batch-api",
        action="store_true",
        help="workers send this job through the provider's batch API (half price, 24 h)",
    )
    submit.add_argument("--batch-provider", choices=("openai", "anthropic", "gemini"), default=None)
    submit.add_argument("--api-key-env", default=None, help=argparse.SUPPRESS)
    submit.add_argument("--concurrency", type=int, default=16, help=argparse.SUPPRESS)
    submit.add_argument("--rpm", type=float, default=None, help=argparse.SUPPRESS)
    submit.add_argument("--tpm", type=float, default=None, help=argparse.SUPPRESS)
    submit.add_argument("--redis", default=None, help=argparse.SUPPRESS)

    work = sub.add_parser(
        "work", help="run the store's unfinished jobs beside any other workers, on any host"
    )
    work.add_argument("--store", default=None, help="SQLite path or postgresql:// DSN")
    work.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    work.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding the key (the key is never stored; default "
        "OPENAI_API_KEY, or ANTHROPIC_API_KEY for /v1/messages)",
    )
    work.add_argument("--concurrency", type=int, default=16)
    work.add_argument("--rpm", type=float, default=None, help="requests per minute budget")
    work.add_argument("--tpm", type=float, default=None, help="tokens per minute budget")
    work.add_argument("--redis", default=None, metavar="URL", help="share --rpm/--tpm in Redis")
    work.add_argument("--job", action="append", default=None, help="only this job (repeatable)")
    work.add_argument(
        "--until-idle", action="store_true", help="exit once no unfinished job is left"
    )
    add_runner_options(work)
    add_batch_options(work)

    for name, help_ in (
        ("jobs", "list jobs"),
        ("status", "show a job"),
        ("cancel", "cancel a job"),
        ("results", "print a job's results"),
    ):
        sp = sub.add_parser(name, help=help_)
        if name != "jobs":
            sp.add_argument("job")
        sp.add_argument("--store", default=None, help="job store (or set FERROBATCH_STORE)")
        if name == "results":
            sp.add_argument("-o", "--output", default=None, help="file (default: stdout)")

    cache = sub.add_parser("cache", help="look at or clear a result cache")
    cache.add_argument("action", choices=["stats", "clear"])
    cache.add_argument(
        "location", help='"memory", a SQLite file, sqlite:///path, redis://... or postgresql://...'
    )
    cache.add_argument("--namespace", default=None, help="the namespace the cache was given")

    demo = sub.add_parser("demo", help="batching, faults and a job against the fake server")
    demo.add_argument("--base-url", default=None, help="run against a real endpoint instead")
    demo.add_argument("--api-key-env", default="OPENAI_API_KEY")
    demo.add_argument("--model", default="text-embedding-3-small")
    demo.add_argument("--chat-model", default="gpt-4o-mini")
    demo.add_argument("--n", type=int, default=2000, help="texts to embed (fake server)")
    return p


def show_log() -> None:
    """The `ferrobatch` logger's records (a takeover, a store outage, a job's error, which
    job a worker works) on stderr, unless the program set up logging itself."""
    logger = logging.getLogger("ferrobatch")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ferrobatch: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("run", "work"):
        show_log()
    try:
        if args.command == "run":
            return asyncio.run(cmd_run(args))
        if args.command == "work":
            return asyncio.run(cmd_work(args))
        if args.command == "demo":
            return asyncio.run(cmd_demo(args))
        return {
            "submit": cmd_submit,
            "jobs": cmd_jobs,
            "status": cmd_status,
            "cancel": cmd_cancel,
            "results": cmd_results,
            "cache": cmd_cache,
        }[args.command](args)
    except CliError as e:
        print(f"ferrobatch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted; run the same command again to resume (claimed requests were "
            "handed back)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # a typed ferrobatch error (unknown job, store locked, ...)
        from ferrobatch import FerrobatchError

        if isinstance(e, FerrobatchError):
            print(f"ferrobatch: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
