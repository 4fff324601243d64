"""Batch jobs that survive crashes and scale past one machine: `JobManager` runs many
requests through a ferrobatch HTTP client and keeps every request and result in a `JobStore`:
a SQLite file on one machine, or PostgreSQL for workers on many hosts.

```python
manager = JobManager(client=chat, store=JobStore("batches.db"))
job = await manager.create_job([JobRequest(id="r1", body={"messages": [...]}), ...], name="x")
await manager.wait(job.id, progress=True)
results = await manager.get_results(job.id)      # in submit order
```

Claim → send → record runs in the Rust core on its tokio runtime: no Python per request.

Guarantees:

- The job and its requests are written (one transaction) before `create_job` returns.
- Outcomes are recorded in groups, every `flush_interval` seconds (0.1) or `flush_max`
  outcomes (1000), whichever comes first; `flush_interval=0` records each on its own.
- Kill a worker at any moment (kill -9): every request still ends exactly once in the store.
  A request whose outcome was recorded is never sent again. What is sent again is bounded by
  what that worker had in flight plus what it had not yet recorded; it is taken over by
  another worker once the dead one's heartbeat is older than `lease_seconds`.
- Any number of managers and `ferrobatch work` processes on one store never send the same
  request at the same time: each request is claimed by one runner, whose heartbeats keep the
  claim; an outcome is recorded only by the runner and attempt that hold the claim.
- `failed` is a job-level state (authentication, the server unreachable for longer than
  `patience`); a request that fails on its own leaves the job `completed`, its result
  carrying `error`.
- The API key is never stored; a PostgreSQL password never shows in reprs or errors.

Half-price bulk jobs: `JobManager(client, store, via="batch-api")` runs the same job through
the provider's own batch API (OpenAI Batch API, Anthropic Message Batches, Gemini Batch Mode),
which charges half and answers within 24 h. The store keeps the same requests and results;
see `JobManager` for what is guaranteed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from os import PathLike
from typing import Any, TextIO, TypedDict, Union

from ferrobatch._http import EmbeddingsBase
from ferrobatch._native import (
    JobInput,
    JobRunner,
    detect_provider,
    estimate_requests,
    provider_facts,
)
from ferrobatch._native import (
    JobStore as NativeJobStore,
)
from ferrobatch.anthropic import Messages
from ferrobatch.openai import ChatCompletions

__all__ = [
    "CostEstimate",
    "Job",
    "JobManager",
    "JobProgress",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "JobStore",
    "ProgressReporter",
    "ProviderBatch",
]

Client = Union[EmbeddingsBase, ChatCompletions, Messages]

#: Ways a job's requests are sent.
VIAS = ("online", "batch-api")
#: Providers' batch APIs.
BATCH_PROVIDERS = ("openai", "anthropic", "gemini")


@dataclass(frozen=True)
class ProviderBatch:
    """One provider batch of a job (some of its requests), as the store keeps it."""

    number: int
    provider: str
    #: `planned`, `creating`, `created` or `settled`.
    state: str
    batch_id: str | None
    #: The provider's last status and counts, e.g. `in_progress (120 succeeded, 0 failed of
    #: 500)`; Anthropic's batches say `in_progress (processing)` until they end.
    remote_status: str | None
    requests: int


@dataclass(frozen=True)
class CostEstimate:
    """What requests would cost before they are sent: input tokens estimated from the text
    (characters / 4), output tokens at most what `max_tokens` allows. Costs are None for a
    model without a price; `batch_api` halves them."""

    requests: int
    input_tokens: int
    max_output_tokens: int
    input_cost: float | None
    max_output_cost: float | None
    batch_api: bool

    @property
    def max_cost(self) -> float | None:
        """The most the requests can cost (every answer as long as `max_tokens` allows)."""
        if self.input_cost is None or self.max_output_cost is None:
            return None
        return self.input_cost + self.max_output_cost


class JobStatus(Enum):
    """A job's state: pending → processing → completed | failed | cancelled."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRequest:
    """One request of a job: a unique `id` and the request body (a JSON object)."""

    id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class JobResult:
    """One request's outcome: `response` (the response body) or `error` (a dict with `type`,
    `message`, and `status` / `code` when the server gave them); both None while it has not
    ended."""

    id: str
    status: str
    response: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.response is not None and self.error is None


@dataclass(frozen=True)
class JobProgress:
    """Counts of a job's requests, with tokens and cost (None without prices) of ended ones."""

    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    input_tokens: int
    output_tokens: int
    cost: float | None

    @property
    def done(self) -> int:
        """Requests that ended (succeeded, failed or cancelled)."""
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class Job:
    """A job as stored."""

    id: str
    name: str | None
    status: JobStatus
    endpoint: str
    total: int
    created_at: float
    error: str | None
    settings: dict[str, Any]


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        name=row["name"],
        status=JobStatus(row["status"]),
        endpoint=row["endpoint"],
        total=row["total"],
        created_at=row["created_at"],
        error=row["error"],
        settings=json.loads(row["settings"]) if row["settings"] else {},
    )


class JobStore:
    """Where jobs, requests and results live: a SQLite file (WAL mode; `":memory:"`, the
    default, keeps them in memory only), or a PostgreSQL database given by a DSN
    (`"postgresql://user:password@host/db"`, TLS with `?sslmode=require`). Several processes
    may open the same store; with PostgreSQL they may be on many hosts."""

    def __init__(self, location: str | PathLike[str] = ":memory:") -> None:
        self._native = NativeJobStore(str(location))
        #: The store's location (a PostgreSQL password is shown as `***`).
        self.path = self._native.location

    @property
    def engine(self) -> str:
        """`"sqlite"` or `"postgresql"`."""
        return self._native.engine

    @property
    def schema_version(self) -> int:
        return self._native.schema_version()

    def job(self, job_id: str) -> Job:
        """One job (`JobNotFoundError` for an unknown id)."""
        return _job(self._native.job(job_id))

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        return [_job(r) for r in self._native.jobs()]

    def find_by_input(self, input_hash: str) -> Job | None:
        """The newest job submitted with this `input_hash`."""
        row = self._native.find_by_input(input_hash)
        return None if row is None else _job(row)

    def progress(self, job_id: str) -> JobProgress:
        """Counts of the job's requests, tokens and cost (work done by every runner)."""
        return JobProgress(**self._native.progress(job_id))

    def results(self, job_id: str) -> list[JobResult]:
        """Every request's outcome, in submit order."""
        return [
            JobResult(
                id=rid,
                status=status,
                response=json.loads(resp) if resp is not None else None,
                error=json.loads(err) if err is not None else None,
            )
            for _, rid, status, resp, err in self._native.results(job_id)
        ]

    def held_by(self, job_id: str) -> dict[str, int]:
        """How many of the job's requests each runner (worker) holds now: claimed, outcome
        not yet recorded; by runner id."""
        return dict(self._native.held_by(job_id))

    def write_results(self, job_id: str, path: str | PathLike[str]) -> int:
        """Write the job's results as an OpenAI Batch API output file (replaced atomically,
        never left half-written); returns how many lines."""
        return self._native.write_results(job_id, str(path))

    def results_jsonl(self, job_id: str) -> bytes:
        """The job's results as OpenAI Batch API output lines."""
        return self._native.results_jsonl(job_id)

    def cancel(self, job_id: str) -> int:
        """Cancel the job: its pending requests will never be sent; how many there were."""
        return self._native.cancel(job_id)

    def provider_batches(self, job_id: str) -> list[ProviderBatch]:
        """The job's provider batches (jobs run with `via="batch-api"`), in order."""
        return [
            ProviderBatch(
                number=c["number"],
                provider=c["provider"],
                state=c["state"],
                batch_id=c["batch_id"],
                remote_status=c["remote_status"],
                requests=c["requests"],
            )
            for c in self._native.provider_batches(job_id)
        ]

    def __repr__(self) -> str:
        return f"JobStore({self.path!r})"


def _endpoint(client: Client) -> str:
    if isinstance(client, ChatCompletions):
        return "/v1/chat/completions"
    if isinstance(client, EmbeddingsBase):
        return "/v1/embeddings"
    if isinstance(client, Messages):
        return "/v1/messages"
    raise TypeError(
        "client must be a ferrobatch HTTP batcher (ferrobatch.openai.Embeddings, "
        "ferrobatch.openai.ChatCompletions, ferrobatch.anthropic.Messages or "
        f"ferrobatch.gemini.Embeddings), got {type(client).__name__}"
    )


def new_job_id() -> str:
    """A fresh job id."""
    return f"batch_{uuid.uuid4().hex[:24]}"


def store_input(
    store: JobStore, source: JobInput, name: str | None, settings: Mapping[str, Any]
) -> str:
    """Store a checked JSONL input (`read_job_input`) as a new job; returns its id. The
    bodies go from the file to the store in Rust."""
    job_id = new_job_id()
    store._native.create_job_from(source, job_id, name, json.dumps(dict(settings)))
    return job_id


class BatchApiOptions(TypedDict):
    """How the native runner and worker send a job through a provider's batch API."""

    provider: str | None
    poll_interval: float | None
    max_attempts: int
    max_open_batches: int
    requests: int | None
    bytes: int | None
    fallback_online: bool


def batch_api_options(
    *,
    via: str = "online",
    batch_provider: str | None = None,
    poll_interval: float | None = None,
    max_attempts: int = 3,
    max_open_batches: int = 4,
    batch_requests: int | None = None,
    batch_bytes: int | None = None,
    fallback_online: bool = False,
) -> BatchApiOptions | None:
    """`JobManager`'s batch-API keywords as the native runner and worker take them (None:
    online)."""
    if via != "batch-api":
        return None
    return {
        "provider": batch_provider,
        "poll_interval": poll_interval,
        "max_attempts": int(max_attempts),
        "max_open_batches": int(max_open_batches),
        "requests": batch_requests,
        "bytes": batch_bytes,
        "fallback_online": bool(fallback_online),
    }


class JobManager:
    """Runs jobs through `client` (any ferrobatch HTTP batcher), recording them in `store`.

    - `lease_seconds`: how long this manager's claims outlive its last heartbeat (it beats
      every third of it); after a crash its requests are taken over once it runs out.
    - `patience`: seconds of connection failures (no successful request) after which the job
      fails instead of waiting for the server; store outages are waited out as long.
    - `concurrency`: most requests in flight at once. The default is what the client has in
      flight online: `concurrency * max_batch_size` of a chat client, `concurrency` requests
      of an embeddings client.
    - `window`: most requests of one job claimed and not yet answered (default
      `2 * concurrency`, at most 4096).
    - `flush_interval` / `flush_max`: outcomes are recorded in groups, after at most this
      many seconds or this many outcomes; `flush_interval=0` records each on its own.

    `via="batch-api"` sends the job through the provider's own batch API at half price
    (answers within 24 h): `ChatCompletions` and OpenAI `Embeddings` through the OpenAI Batch
    API, `Messages` through Anthropic's Message Batches, and a `ChatCompletions` on Gemini's
    OpenAI-compatible base URL (`.../v1beta/openai`) through Gemini's Batch Mode
    (`batch_provider="gemini"`, chosen by itself for a googleapis.com URL). Then:

    - Requests are split into provider batches by count and bytes (`batch_requests`,
      `batch_bytes`; the provider's limits by default: OpenAI 50,000 / 200 MB and one model
      a file, Anthropic 100,000 / 256 MB, Gemini 20 MB inline); `max_open_batches` of a job
      run at once.
    - No second paid batch after a crash: the intent to create is written before each create
      call and the batch id right after; a restarted (or another) runner looks for the batch
      in the provider's list (OpenAI by metadata, Gemini by display name, Anthropic by
      creation time and size) before it creates anything.
    - Every line is harvested (output and error files, the partial results of expired and
      cancelled batches). Permanent errors (400-class) are the request's outcome; retryable
      ones (expired, cancelled, timed out, `status_code 0`, 429, 5xx, overloaded, no line at
      all) go into a later batch until a request has had `max_attempts`; with
      `fallback_online=True` they are sent through the online endpoint at once instead (full
      price; for stragglers near a deadline).
    - Costs come from the usage each result reports, at half the client's prices, counted once.
    - Batches are polled every `poll_interval` seconds (±20%; 60 s by default, 30 s for
      Gemini); `provider_batches(job_id)` on the store shows each one's status. Cancelling
      the job cancels its provider batches and keeps what they finished.
    """

    def __init__(
        self,
        client: Client,
        store: JobStore | None = None,
        *,
        lease_seconds: float = 60.0,
        patience: float = 300.0,
        window: int | None = None,
        concurrency: int | None = None,
        flush_interval: float = 0.1,
        flush_max: int = 1000,
        via: str = "online",
        batch_provider: str | None = None,
        poll_interval: float | None = None,
        max_attempts: int = 3,
        max_open_batches: int = 4,
        batch_requests: int | None = None,
        batch_bytes: int | None = None,
        fallback_online: bool = False,
    ) -> None:
        self.client = client
        self.endpoint = _endpoint(client)
        if via not in VIAS:
            raise ValueError(f"via must be one of {VIAS}, got {via!r}")
        if batch_provider is None and via == "batch-api":
            batch_provider = detect_provider(self.endpoint, getattr(client, "base_url", None))
        if batch_provider is not None and batch_provider not in BATCH_PROVIDERS:
            raise ValueError(
                f"batch_provider must be one of {BATCH_PROVIDERS}, got {batch_provider!r}"
            )
        self.via = via
        self.batch_provider = batch_provider
        self.store = store if store is not None else JobStore()
        if concurrency is None:
            slots = client.concurrency if client.concurrency > 0 else 64
            per_batch = client.max_batch_size if client.max_batch_size > 0 else 1
            if isinstance(client, EmbeddingsBase):
                per_batch = 1
            concurrency = min(1024, slots * per_batch)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if window is None:
            window = min(4096, 2 * concurrency)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._settings: dict[str, Any] = {
            "lease_seconds": float(lease_seconds),
            "window": int(window),
            "concurrency": int(concurrency),
            "flush_interval": float(flush_interval),
            "flush_max": int(flush_max),
            "patience": float(patience),
            "host": socket.gethostname(),
        }
        self._settings["batch_api"] = batch_api_options(
            via=via,
            batch_provider=batch_provider,
            poll_interval=poll_interval,
            max_attempts=max_attempts,
            max_open_batches=max_open_batches,
            batch_requests=batch_requests,
            batch_bytes=batch_bytes,
            fallback_online=fallback_online,
        )
        self.lease_seconds = lease_seconds
        self.patience = patience
        self.window = window
        self.concurrency = concurrency
        self._runner: JobRunner | None = None
        self._make_runner()  # checks the settings now
        self._runners: dict[str, asyncio.Future[str]] = {}

    def _make_runner(self) -> JobRunner:
        if self._runner is None:
            self._runner = JobRunner(self.store._native, self.client._client, **self._settings)
        return self._runner

    @property
    def owner(self) -> str:
        """This manager's runner id in the store."""
        return self._make_runner().id

    # --- submitting ----------------------------------------------------------------------

    async def create_job(
        self,
        requests: Iterable[JobRequest],
        name: str | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        input_hash: str | None = None,
        start: bool = True,
    ) -> Job:
        """Store a job and start running it; returns once every request is written.

        Raises `DuplicateRequestIdError` for a repeated id, `TypeError` for a request that is
        not a `JobRequest` with a dict body, and `InvalidInputError` (a `ValueError`) naming
        the request whose body cannot be sent (not JSON, not UTF-8, missing what its endpoint
        needs); nothing is written then.
        """
        rows: list[tuple[str, Any]] = []
        for i, r in enumerate(requests):
            if not isinstance(r, JobRequest):
                raise TypeError(f"requests[{i}] must be a JobRequest, got {type(r).__name__}")
            if not isinstance(r.id, str) or not r.id:
                raise ValueError(f"requests[{i}]: id must be a non-empty str")
            if not isinstance(r.body, Mapping):
                raise TypeError(f"request {r.id!r}: body must be a dict")
            rows.append((r.id, r.body if isinstance(r.body, dict) else dict(r.body)))
        shape = None
        if isinstance(self.client, EmbeddingsBase):
            shape = (self.client.model, self.client.dimensions)
        job_id = new_job_id()
        await asyncio.to_thread(
            self.store._native.create_job,
            job_id,
            name,
            self.endpoint,
            json.dumps(dict(settings or {})),
            input_hash,
            rows,
            gemini_batch=self.batch_provider == "gemini" and self.via == "batch-api",
            embeddings=shape,
        )
        if start:
            self._start(job_id)
        return await self.get_job(job_id)

    def estimate(self, requests: Iterable[JobRequest] | JobInput) -> CostEstimate:
        """What `requests` (or a JSONL input read by `read_job_input`) would cost through
        this manager (at the provider's batch prices with `via="batch-api"`), before anything
        is sent; see `CostEstimate`."""
        default = str(getattr(self.client, "model", ""))
        if isinstance(requests, JobInput):
            rows = requests.estimate(default)
        else:
            bodies = [json.dumps(dict(r.body)) for r in requests]
            rows = estimate_requests(self.endpoint, bodies, default)
        factor = 1.0
        if self.via == "batch-api" and self.batch_provider is not None:
            factor = float(provider_facts(self.batch_provider)["batch_price_factor"])
        prices: Mapping[str, Mapping[str, float]] = getattr(self.client, "prices", {}) or {}
        n = inp = out = 0
        in_cost: float | None = 0.0
        out_cost: float | None = 0.0
        for model, count, tokens, most in rows:
            n, inp, out = n + count, inp + tokens, out + most
            price = prices.get(model)
            if price is None or in_cost is None or out_cost is None:
                in_cost = out_cost = None
                continue
            in_cost += tokens * price.get("input", 0.0) / 1e6 * factor
            out_cost += most * price.get("output", 0.0) / 1e6 * factor
        return CostEstimate(n, inp, out, in_cost, out_cost, self.via == "batch-api")

    # --- reading -------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.store.job, job_id)

    async def get_status(self, job_id: str) -> JobStatus:
        """The job's state (`JobNotFoundError` for an unknown id)."""
        return (await self.get_job(job_id)).status

    async def progress(self, job_id: str) -> JobProgress:
        """Counts of the job's requests, tokens and cost (work done by every runner)."""
        return await asyncio.to_thread(self.store.progress, job_id)

    async def get_results(self, job_id: str) -> list[JobResult]:
        """Every request's outcome, in submit order."""
        return await asyncio.to_thread(self.store.results, job_id)

    def list_jobs(self) -> list[Job]:
        """Every job in the store, oldest first."""
        return self.store.jobs()

    # --- controlling ---------------------------------------------------------------------

    async def cancel(self, job_id: str) -> int:
        """Cancel the job: pending requests are never sent; in-flight ones finish and are
        recorded (provider batches are cancelled, and what they finished is kept). Returns
        how many requests were cancelled now (those in provider batches follow as the
        batches end)."""
        return await asyncio.to_thread(self.store.cancel, job_id)

    async def retry_failed(self, job_id: str) -> int:
        """Run the job's failed requests again (and, for a failed job, its unsent ones);
        returns how many were reset."""
        db = self.store._native
        n = await asyncio.to_thread(db.reset_failed, job_id)
        job = await self.get_job(job_id)
        if n or job.status is JobStatus.FAILED:
            await asyncio.to_thread(db.set_status, job_id, "processing")
            self._start(job_id)
        return n

    async def resume(self) -> list[Job]:
        """Continue every unfinished job in the store (after a restart); returns them."""
        jobs = [j for j in await asyncio.to_thread(self.list_jobs) if not j.status.is_terminal]
        for j in jobs:
            self._start(j.id)
        return jobs

    async def work(self, job_ids: Iterable[str] | None = None, *, until_idle: bool = True) -> None:
        """Work the store's unfinished jobs (all, or `job_ids`) beside any other workers, as
        they appear: with `until_idle`, until none is left; otherwise until `close()`."""
        ids = None if job_ids is None else list(job_ids)
        await self._make_runner().work(ids, until_idle)

    async def wait(
        self, job_id: str, progress: bool | ProgressReporter = False, poll: float = 0.2
    ) -> Job:
        """Wait until the job is completed, failed or cancelled, running it here meanwhile
        (beside any other workers). With `progress=True`, draw a progress bar (tqdm, if
        installed) on a terminal; or pass a `ProgressReporter` to choose how it is shown."""
        job = await self.get_job(job_id)
        bar: ProgressReporter | None
        if isinstance(progress, ProgressReporter):
            bar = progress
        else:
            bar = ProgressReporter(job.total, every=None) if progress else None
        try:
            mine = self._runners.get(job_id)
            if job.status.is_terminal and (mine is None or mine.done()):
                return job  # and nothing of it is in flight here
            runner = self._start(job_id)
            while not runner.done():
                await asyncio.wait([runner], timeout=poll)
                if bar is not None and not runner.done():
                    bar.update(await self.progress(job_id))
            runner.result()  # a store error that stopped the runner is raised here
            return await self.get_job(job_id)
        finally:
            if bar is not None:
                bar.update(await self.progress(job_id), final=True)

    async def close(self) -> None:
        """Stop this manager's runner: nothing more is claimed, what is in flight is
        abandoned, what is done is recorded, and its claimed requests go back to pending."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop()
        for fut in self._runners.values():
            if not fut.done():
                fut.cancel()
        self._runners.clear()

    async def __aenter__(self) -> JobManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- running -------------------------------------------------------------------------

    def _start(self, job_id: str) -> asyncio.Future[str]:
        fut = self._runners.get(job_id)
        if fut is None or fut.done():
            fut = self._make_runner().run(job_id)
            self._runners[job_id] = fut
        return fut


class ProgressReporter:
    """Shows a job's progress (done, failed, rate, tokens, ETA): a tqdm bar when `stream` is a
    terminal and tqdm is installed; otherwise a plain line every `every` seconds (nothing when
    `every` is None). `already` requests ended before this run and do not count in its rate."""

    def __init__(
        self,
        total: int,
        already: int = 0,
        stream: TextIO | None = None,
        every: float | None = 2.0,
    ) -> None:
        self.total, self.already, self.every = total, already, every
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = already
        self.bar: Any = None
        if self.stream.isatty():
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

                self.bar = tqdm(total=total, initial=already, unit="req", file=self.stream)
            except ImportError:
                self.bar = None

    def line(self, p: JobProgress) -> str:
        """The plain progress line."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (p.done - self.already) / elapsed
        eta = f"{(p.total - p.done) / rate:.0f}s" if rate > 0 else "?"
        return (
            f"done {p.done}/{p.total} (failed {p.failed}) {rate:.1f} req/s "
            f"tokens {p.input_tokens + p.output_tokens} eta {eta}"
        )

    def update(self, p: JobProgress, final: bool = False) -> None:
        """Show `p`; `final` closes the bar (or prints a last line if anything changed)."""
        if self.bar is not None:
            self.bar.set_postfix(failed=p.failed, tokens=p.input_tokens + p.output_tokens)
            self.bar.update(p.done - self.shown)
            self.shown = p.done
            if final:
                self.bar.close()
            return
        if self.every is None:
            return
        now = time.monotonic()
        if now - self.last >= self.every or (final and p.done != self.shown):
            self.last, self.shown = now, p.done
            print(self.line(p), file=self.stream, flush=True)
