"""Batch jobs that survive crashes: `BatchManager` runs many requests through a ferrobatch HTTP
batcher and keeps every request and result in a `BatchStore` (SQLite, WAL mode).

```python
manager = BatchManager(client=chat, store=BatchStore("batches.db"))
job = await manager.submit([BatchRequest(id="r1", body={"messages": [...]}), ...], name="x")
await manager.wait(job.id, progress=True)
results = await manager.get_results(job.id)      # in submit order
```

Guarantees:

- The job and its requests are written (one transaction) before `submit` returns; each result
  is committed as it arrives.
- Kill the process at any moment, restart, `await manager.resume()`: every request ends exactly
  once. A request whose result was committed is never sent again. A request that was in
  flight at the crash is sent again once its lease expires (`lease_seconds`), and nothing else
  is.
- Two managers on one store never run the same request at the same time: each request is
  leased to one runner, the lease is renewed while the request is in flight, and only the
  lease holder's result is committed.
- `failed` is a job-level state (authentication, the server unreachable for longer than
  `patience`); a request that fails on its own leaves the job `completed`, its result
  carrying `error`.
- The API key is never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from os import PathLike
from typing import Any, TextIO, Union

from ferrobatch._http import EmbeddingsBase
from ferrobatch._native import (
    APIConnectionError,
    AuthenticationError,
    InvalidInputError,
    JobStore,
    NotFoundError,
    PermissionDeniedError,
)
from ferrobatch.openai import ChatCompletions

__all__ = [
    "BatchManager",
    "BatchRequest",
    "BatchResult",
    "BatchStatus",
    "BatchStore",
    "Job",
    "JobProgress",
    "ProgressReporter",
]

Client = Union[EmbeddingsBase, ChatCompletions]

#: Seconds between a runner's looks at its job's status (for a cancel from elsewhere).
_STATUS_EVERY = 0.25

#: Errors that end the whole job: no other request can succeed while they hold.
_FATAL = (AuthenticationError, PermissionDeniedError, NotFoundError)


class BatchStatus(Enum):
    """A job's state: pending → processing → completed | failed | cancelled."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED)


@dataclass(frozen=True)
class BatchRequest:
    """One request of a job: a unique `id` and the request body (a JSON object)."""

    id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class BatchResult:
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
    status: BatchStatus
    endpoint: str
    total: int
    created_at: float
    error: str | None
    settings: dict[str, Any]


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        name=row["name"],
        status=BatchStatus(row["status"]),
        endpoint=row["endpoint"],
        total=row["total"],
        created_at=row["created_at"],
        error=row["error"],
        settings=json.loads(row["settings"]) if row["settings"] else {},
    )


class BatchStore:
    """Jobs, requests and results in one SQLite file (WAL mode); `":memory:"` (the default)
    keeps them in memory only. Several processes may open the same file."""

    def __init__(self, path: str | PathLike[str] = ":memory:") -> None:
        self.path = str(path)
        self._native = JobStore(self.path)

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
        """Counts of the job's requests, tokens and cost."""
        return JobProgress(**self._native.progress(job_id))

    def results(self, job_id: str) -> list[BatchResult]:
        """Every request's outcome, in submit order."""
        return [
            BatchResult(
                id=rid,
                status=status,
                response=json.loads(resp) if resp is not None else None,
                error=json.loads(err) if err is not None else None,
            )
            for _, rid, status, resp, err in self._native.results(job_id)
        ]

    def cancel(self, job_id: str) -> int:
        """Cancel the job: its pending requests will never be sent; how many there were."""
        return self._native.cancel(job_id)

    def __repr__(self) -> str:
        return f"BatchStore({self.path!r})"


def _error_dict(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for attr in ("status", "code", "param"):
        value = getattr(exc, attr, None)
        if value is not None:
            out[attr] = value
    return out


def _endpoint(client: Client) -> str:
    if isinstance(client, ChatCompletions):
        return "/v1/chat/completions"
    if isinstance(client, EmbeddingsBase):
        return "/v1/embeddings"
    raise TypeError(
        "client must be a ferrobatch HTTP batcher (ferrobatch.openai.Embeddings, "
        "ferrobatch.openai.ChatCompletions or ferrobatch.gemini.Embeddings), got "
        f"{type(client).__name__}"
    )


#: Embedding body fields a job honours; the client's settings must match them.
_EMBEDDING_FIELDS = {"input", "model", "dimensions", "encoding_format", "user"}


def _check_body(client: Client, endpoint: str, rid: str, body: Mapping[str, Any]) -> None:
    if isinstance(client, EmbeddingsBase):
        unknown = sorted(set(body) - _EMBEDDING_FIELDS)
        if unknown:
            raise ValueError(f"request {rid!r}: unsupported embeddings field(s) {unknown}")
        for field, have in (("model", client.model), ("dimensions", client.dimensions)):
            if field in body and body[field] != have:
                raise ValueError(
                    f"request {rid!r}: {field}={body[field]!r} differs from the client's "
                    f"{field}={have!r}; a job's embeddings use the client's settings"
                )
        inp = body.get("input")
        ok = isinstance(inp, str) or (
            isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp)
        )
        if not ok:
            raise ValueError(
                f"request {rid!r}: an embeddings body needs `input`: a string or a non-empty "
                "list of strings"
            )
    elif not isinstance(body.get("messages"), list):
        raise ValueError(f"request {rid!r}: a chat body needs `messages`: a list")


class BatchManager:
    """Runs jobs through `client` (any ferrobatch HTTP batcher), recording them in `store`.

    - `lease_seconds`: how long a claimed request is reserved for this manager without a
      renewal; after a crash its in-flight requests are sent again once it runs out.
    - `patience`: seconds of connection failures (no successful request) after which the job
      fails instead of waiting for the server.
    - `window`: most requests this manager has claimed per job at once. The default is twice
      what the client can have in flight (`2 * concurrency * max_batch_size`, capped at 4096),
      so that little more than what is really being sent is leased when a crash happens.
    """

    def __init__(
        self,
        client: Client,
        store: BatchStore | None = None,
        *,
        lease_seconds: float = 60.0,
        patience: float = 300.0,
        window: int | None = None,
    ) -> None:
        self.client = client
        self.endpoint = _endpoint(client)
        self.store = store if store is not None else BatchStore()
        if not (lease_seconds > 0 and math.isfinite(lease_seconds)):
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        if window is None:
            slots = client.concurrency if client.concurrency > 0 else 64
            per_batch = client.max_batch_size if client.max_batch_size > 0 else 256
            window = min(4096, 2 * slots * per_batch)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.lease_seconds = lease_seconds
        self.patience = patience
        self.window = window
        self.owner = f"{uuid.uuid4().hex}"
        self._db = self.store._native
        self._runners: dict[str, asyncio.Task[None]] = {}
        # Jobs this manager failed: their runner stops claiming at once.
        self._failed: set[str] = set()
        self._last_ok = time.monotonic()

    # --- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        requests: Iterable[BatchRequest],
        name: str | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        input_hash: str | None = None,
        start: bool = True,
    ) -> Job:
        """Store a job and start running it; returns once every request is written.

        Raises `DuplicateRequestIdError` for a repeated id, `TypeError` / `ValueError` for a
        request that cannot be sent (naming its id; `InvalidInputError`, a `ValueError`, for a
        body UTF-8 cannot encode); nothing is written then.
        """
        rows: list[tuple[str, str]] = []
        for i, r in enumerate(requests):
            if not isinstance(r, BatchRequest):
                raise TypeError(f"requests[{i}] must be a BatchRequest, got {type(r).__name__}")
            if not isinstance(r.id, str) or not r.id:
                raise ValueError(f"requests[{i}]: id must be a non-empty str")
            if not isinstance(r.body, Mapping):
                raise TypeError(f"request {r.id!r}: body must be a dict")
            _check_body(self.client, self.endpoint, r.id, r.body)
            try:
                text = json.dumps(dict(r.body), allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"request {r.id!r}: body is not JSON: {e}") from None
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidInputError(
                    f"request {r.id!r}: the body cannot be sent as UTF-8 ({e}); decode its "
                    "source with errors='replace' or clean the data"
                ) from None
            rows.append((r.id, text))
        job_id = f"batch_{uuid.uuid4().hex[:24]}"
        settings_json = json.dumps(dict(settings or {}))
        await asyncio.to_thread(
            self._db.create_job, job_id, name, self.endpoint, settings_json, input_hash, rows
        )
        if start:
            self._start(job_id)
        return await self.get_job(job_id)

    # --- reading -------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return self.store.job(job_id)

    async def get_status(self, job_id: str) -> BatchStatus:
        """The job's state (`JobNotFoundError` for an unknown id)."""
        return self.store.job(job_id).status

    async def progress(self, job_id: str) -> JobProgress:
        """Counts of the job's requests, tokens and cost."""
        return self.store.progress(job_id)

    async def get_results(self, job_id: str) -> list[BatchResult]:
        """Every request's outcome, in submit order."""
        return await asyncio.to_thread(self.store.results, job_id)

    def list_jobs(self) -> list[Job]:
        """Every job in the store, oldest first."""
        return self.store.jobs()

    # --- controlling ---------------------------------------------------------------------

    async def cancel(self, job_id: str) -> int:
        """Cancel the job: pending requests are never sent; in-flight ones finish and are
        recorded. Returns how many requests were cancelled."""
        return self.store.cancel(job_id)

    async def retry_failed(self, job_id: str) -> int:
        """Run the job's failed requests again (and, for a failed job, its unsent ones);
        returns how many were reset."""
        n = self._db.reset_failed(job_id)
        job = self._db.job(job_id)
        if n or job["status"] == "failed":
            self._failed.discard(job_id)
            self._db.set_status(job_id, "processing")
            self._start(job_id)
        return n

    async def resume(self) -> list[Job]:
        """Continue every unfinished job in the store (after a restart); returns them."""
        jobs = [j for j in self.list_jobs() if not j.status.is_terminal]
        for j in jobs:
            self._start(j.id)
        return jobs

    async def wait(
        self, job_id: str, progress: bool | ProgressReporter = False, poll: float = 0.2
    ) -> Job:
        """Wait until the job is completed, failed or cancelled (and nothing of it is in
        flight here). With `progress=True`, draw a progress bar (tqdm, if installed) on a
        terminal; or pass a `ProgressReporter` to choose how progress is shown."""
        job = self.store.job(job_id)
        if not job.status.is_terminal:
            self._start(job_id)
        bar: ProgressReporter | None
        if isinstance(progress, ProgressReporter):
            bar = progress
        else:
            bar = ProgressReporter(job.total, every=None) if progress else None
        try:
            while True:
                runner = self._runners.get(job_id)
                if bar is not None:
                    bar.update(self.store.progress(job_id))
                status = self.store.job(job_id).status
                if runner is None or runner.done():
                    if runner is not None and not runner.cancelled() and runner.exception():
                        raise runner.exception()  # type: ignore[misc]
                    if status.is_terminal or runner is None:
                        return await self.get_job(job_id)
                    self._start(job_id)
                await asyncio.sleep(poll)
        finally:
            if bar is not None:
                bar.update(self.store.progress(job_id), final=True)

    async def close(self) -> None:
        """Stop this manager's runners; their leased requests go back to pending."""
        for job_id, task in list(self._runners.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._db.release(job_id, self.owner)
        self._runners.clear()

    async def __aenter__(self) -> BatchManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- running -------------------------------------------------------------------------

    def _start(self, job_id: str) -> None:
        task = self._runners.get(job_id)
        if task is None or task.done():
            self._runners[job_id] = asyncio.get_running_loop().create_task(self._run(job_id))

    async def _run(self, job_id: str) -> None:
        db = self._db
        if db.job(job_id)["status"] == "pending":
            db.set_status(job_id, "processing")
        in_flight: set[asyncio.Task[None]] = set()
        renew = asyncio.get_running_loop().create_task(self._renew(job_id))
        self._last_ok = time.monotonic()
        # Claim in chunks (a claim is a write transaction), and look for a cancel or a
        # job-level failure a few times a second rather than after every completion.
        refill = max(1, self.window // 4)
        checked = 0.0
        try:
            while True:
                now = time.monotonic()
                if job_id in self._failed:
                    break
                if now - checked >= _STATUS_EVERY or not in_flight:
                    checked = now
                    if db.job(job_id)["status"] in ("cancelled", "failed", "completed"):
                        break
                free = self.window - len(in_flight)
                due = free >= refill or not in_flight
                claimed = db.claim(job_id, self.owner, free, self.lease_seconds) if due else []
                for seq, rid, body, _attempts in claimed:
                    t = asyncio.get_running_loop().create_task(self._one(job_id, seq, rid, body))
                    in_flight.add(t)
                if in_flight:
                    done, _ = await asyncio.wait(
                        in_flight, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                    )
                    in_flight -= done
                    continue
                if claimed:
                    continue
                p = db.progress(job_id)
                if p["pending"] == 0 and p["running"] == 0:
                    db.set_status(job_id, "completed")
                    break
                # Requests leased by another runner (alive, or dead until its lease expires).
                await asyncio.sleep(min(0.5, self.lease_seconds / 4))
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            renew.cancel()
            for t in in_flight:
                t.cancel()

    async def _renew(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            self._db.renew(job_id, self.owner, self.lease_seconds)

    async def _one(self, job_id: str, seq: int, rid: str, body_text: str) -> None:
        body = json.loads(body_text)
        response: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        tokens = (0, 0)
        try:
            response, tokens = await self._execute(body)
            self._last_ok = time.monotonic()
        except asyncio.CancelledError:
            raise
        except _FATAL as exc:
            error = _error_dict(exc)
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
        except APIConnectionError as exc:
            error = _error_dict(exc)
            if time.monotonic() - self._last_ok > self.patience:
                self._fail(
                    job_id, f"the server was unreachable for more than {self.patience:g}s: {exc}"
                )
        except Exception as exc:  # every request ends with a result or an error
            error = _error_dict(exc)
        self._db.complete(
            job_id,
            seq,
            self.owner,
            error is None,
            json.dumps(response) if response is not None else None,
            json.dumps(error) if error is not None else None,
            tokens[0],
            tokens[1],
            self._cost(body, tokens),
        )

    def _fail(self, job_id: str, reason: str) -> None:
        self._failed.add(job_id)
        self._db.set_status(job_id, "failed", reason)

    def _cost(self, body: Mapping[str, Any], tokens: tuple[int, int]) -> float | None:
        model = body.get("model") or getattr(self.client, "model", None)
        price = self.client.prices.get(model) if isinstance(model, str) else None
        if price is None:
            return None
        return (tokens[0] * price.get("input", 0.0) + tokens[1] * price.get("output", 0.0)) / 1e6

    async def _execute(self, body: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        client = self.client
        if isinstance(client, ChatCompletions):
            resp = await client.process(body)
            usage = resp.get("usage") or {}
            return resp, (
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
        inp = body["input"]
        texts = [inp] if isinstance(inp, str) else list(inp)
        vectors = await client.embed_many(texts)
        tokens = sum(max(1, math.ceil(len(t) / 4)) for t in texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
            for i, v in enumerate(vectors)
        ]
        resp = {
            "object": "list",
            "data": data,
            "model": body.get("model", client.model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return resp, (tokens, 0)


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
