"""Type stubs of the native extension module `ferrobatch._native`."""

import asyncio
import concurrent.futures
import contextvars
import os
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, final

_T_co = TypeVar("_T_co", covariant=True)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchSizeMismatchError",
    "BatcherStats",
    "BatcherStoppedError",
    "Cache",
    "CacheError",
    "ChatClient",
    "ConfigError",
    "ConflictError",
    "Core",
    "DuplicateRequestIdError",
    "EmbeddingsClient",
    "FerrobatchError",
    "InternalServerError",
    "InvalidBatchResultError",
    "InvalidInputError",
    "ItemFuture",
    "ItemTimeoutError",
    "JobInput",
    "JobNotFoundError",
    "JobRunner",
    "JobStore",
    "JobWorker",
    "LatencySummary",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderBatchError",
    "QueueFullError",
    "RateLimitError",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "StopTimeoutError",
    "StoreError",
    "StreamError",
    "TestServer",
    "UnprocessableEntityError",
    "WrongEventLoopError",
    "_ChatStream",
    "_NativeFn",
    "_Uncached",
    "__version__",
    "_oneshot_probe",
    "_store_suite",
    "detect_provider",
    "estimate_requests",
    "fake_embedding",
    "provider_base_url",
    "provider_facts",
    "provider_key",
    "read_job_input",
]

__version__: Final[str]

class FerrobatchError(Exception):
    """Base class of every ferrobatch error."""

class ConfigError(FerrobatchError, ValueError):
    field: str

class QueueFullError(FerrobatchError):
    capacity: int

class BatcherStoppedError(FerrobatchError, RuntimeError):
    reason: str

class ItemTimeoutError(FerrobatchError, TimeoutError):
    timeout: float

class BatchSizeMismatchError(FerrobatchError, ValueError):
    expected: int
    got: int

class InvalidBatchResultError(FerrobatchError, TypeError): ...
class WrongEventLoopError(FerrobatchError, RuntimeError): ...
class StopTimeoutError(FerrobatchError, TimeoutError): ...

class InvalidInputError(FerrobatchError, ValueError):
    reason: str

class APIError(FerrobatchError):
    message: str
    status: int | None
    status_code: int | None
    body: str | None
    code: str | None
    param: str | None

class APIStatusError(APIError):
    status: int
    status_code: int
    provider: str

class BadRequestError(APIStatusError): ...
class AuthenticationError(APIStatusError): ...
class PermissionDeniedError(APIStatusError): ...
class NotFoundError(APIStatusError): ...
class ConflictError(APIStatusError): ...
class UnprocessableEntityError(APIStatusError): ...
class RateLimitError(APIStatusError): ...
class InternalServerError(APIStatusError): ...
class APIConnectionError(APIError, ConnectionError): ...

class APITimeoutError(APIConnectionError, TimeoutError):
    timeout: float

class StreamError(APIError):
    provider: str

class ResponseFormatError(APIError): ...

class ResponseTooLargeError(ResponseFormatError):
    limit: int

class ProviderBatchError(APIError):
    provider: str

class RateLimiterUnavailableError(FerrobatchError, ConnectionError): ...

class StoreError(FerrobatchError):
    operation: str

class CacheError(FerrobatchError):
    operation: str

class DuplicateRequestIdError(FerrobatchError, ValueError):
    id: str
    index: int
    first: int

class JobNotFoundError(FerrobatchError, LookupError):
    job: str

@final
class LatencySummary:
    @property
    def count(self) -> int: ...
    @property
    def p50(self) -> float: ...
    @property
    def p95(self) -> float: ...
    @property
    def p99(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def sum(self) -> float: ...
    @property
    def buckets(self) -> list[tuple[float, int]]: ...

@final
class BatcherStats:
    @property
    def submitted(self) -> int: ...
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def cancelled(self) -> int: ...
    @property
    def timed_out(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def batch_sizes(self) -> dict[int, int]: ...
    @property
    def queue_wait(self) -> LatencySummary: ...
    @property
    def batch_duration(self) -> LatencySummary: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def running_batches(self) -> int: ...
    @property
    def effective_wait(self) -> float: ...
    @property
    def arrival_rate(self) -> float: ...
    @property
    def deduplicated(self) -> int: ...

@final
class Batch:
    def items(self) -> list[Any]: ...
    def resolve(self, results: Any) -> None: ...
    def fail(self, exc: BaseException) -> None: ...
    def abort(self) -> None: ...
    @property
    def done(self) -> bool: ...
    def __len__(self) -> int: ...

@final
class ItemFuture(Coroutine[Any, Any, _T_co], Generic[_T_co]):
    """What `process()` returns: an asyncio Future and a coroutine in one object."""

    @property
    def _asyncio_future_blocking(self) -> bool: ...
    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value: bool) -> None: ...
    def get_loop(self) -> asyncio.AbstractEventLoop: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    @property
    def _cancel_message(self) -> Any: ...
    def _make_cancelled_error(self) -> asyncio.CancelledError: ...
    def result(self) -> _T_co: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(
        self,
        func: Callable[[ItemFuture[_T_co]], object],
        *,
        context: contextvars.Context | None = None,
    ) -> None: ...
    def remove_done_callback(self, func: Callable[[ItemFuture[_T_co]], object]) -> int: ...
    def cancel(self, msg: Any | None = None) -> bool: ...
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __iter__(self) -> Generator[Any, None, _T_co]: ...
    def __next__(self) -> Any: ...
    def send(self, _value: Any = None) -> Any: ...
    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | object = None,
        _tb: TracebackType | None = None,
    ) -> Any: ...
    def close(self) -> None: ...
    def __class_getitem__(cls, _item: Any) -> type[ItemFuture[Any]]: ...

@final
class _NativeFn:
    """A batch function written in Rust (an HTTP client's); `Core(native=...)` runs its batches
    on the runtime."""

@final
class _Uncached:
    """A chat request body the result cache must not answer (`create(..., cache=False)`)."""

    def __new__(cls, body: Any) -> _Uncached: ...
    @property
    def body(self) -> Any: ...

@final
class Core:
    def __new__(
        cls,
        *,
        start: Callable[[], Callable[[Batch], None] | None],
        max_batch_size: int = ...,
        max_queue_time: float | str | None = ...,
        concurrency: int = ...,
        max_queue_size: int = ...,
        on_full: str = ...,
        item_timeout: float | None = ...,
        max_latency: float | None = ...,
        aging: float | None = ...,
        single_item_batches: bool = ...,
        sync_fn: Callable[..., Any] | None = None,
        sync_fn_weak: bool = False,
        finish: Callable[[], Callable[[Batch, Any], None] | None] | None = None,
        native: _NativeFn | None = None,
        dedupe: bool | Callable[[Any], Any] | None = None,
        dedupe_copy: Callable[[Any], Any] | None = None,
    ) -> Core: ...
    def process(self, item: Any, priority: int = 0) -> ItemFuture[Any]: ...
    def process_many(self, items: Iterable[Any], priority: int = 0) -> ItemFuture[list[Any]]: ...
    def process_sync(self, item: Any, priority: int = 0, timeout: float | None = None) -> Any: ...
    def process_many_sync(
        self, items: Iterable[Any], priority: int = 0, timeout: float | None = None
    ) -> list[Any]: ...
    def submit(self, item: Any, priority: int = 0) -> concurrent.futures.Future[Any]: ...
    def close(self, force: bool) -> None: ...
    def drain_waiter(self) -> ItemFuture[None]: ...
    def wait_drained(self, timeout: float | None = None) -> bool: ...
    @property
    def threaded(self) -> bool: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def event_loop(self) -> asyncio.AbstractEventLoop | None: ...
    def stats(self) -> BatcherStats: ...

@final
class RateLimiter:
    def __new__(
        cls,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        redis_url: str | None = None,
        name: str | None = None,
        burst: float | None = None,
        on_redis_error: str = "local",
    ) -> RateLimiter: ...
    @property
    def requests_per_minute(self) -> float | None: ...
    @property
    def tokens_per_minute(self) -> float | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def burst(self) -> float: ...
    @property
    def shared(self) -> bool: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def live_processes(self) -> int: ...

@final
class Cache:
    """A result cache: answers already paid for, kept in memory, a SQLite file, Redis or PostgreSQL.

    `Cache("memory")` (a bounded LRU, 100,000 entries unless `max_entries`), a file path or
    `"sqlite:///path"`, `"redis://..."` or `"postgresql://..."` (shared by every process and
    host). `ttl` (seconds)
    and `max_entries` bound it; `namespace` keeps caches sharing a store apart. Opened lazily;
    one cache may serve many clients. See docs/guides/cache.md.
    """

    def __new__(
        cls,
        location: str,
        *,
        ttl: float | None = None,
        namespace: str | None = None,
        max_entries: int | None = None,
    ) -> Cache: ...
    def stats(self) -> dict[str, int]:
        """Counters since the cache was opened: hits, misses, writes, corrupt, errors."""
    def entries(self) -> int:
        """Entries stored now (asks the store; blocks with the GIL released)."""
    def clear(self) -> int:
        """Remove every entry of this cache (its namespace); how many there were. Blocks."""
    @property
    def location(self) -> str:
        """Where the entries live (a password replaced)."""

@final
class EmbeddingsClient:
    def __new__(
        cls,
        provider: str,
        model: str,
        *,
        transport: dict[str, Any],
        dimensions: int | None,
        encoding_format: str,
        max_inputs_per_request: int | None,
        max_tokens_per_request: int | None,
        task_type: str | None,
        title: str | None,
        user: str | None,
        format: str,
        cache: Cache | None = None,
    ) -> EmbeddingsClient: ...
    def embed(self, texts: list[Any]) -> asyncio.Future[list[Any]]: ...
    def batch_fn(self) -> _NativeFn: ...
    def usage(self) -> dict[str, Any]: ...
    @property
    def base_url(self) -> str: ...

@final
class ChatClient:
    def __new__(
        cls,
        model: str,
        *,
        transport: dict[str, Any],
        provider: str = "openai",
        output_rate_limiter: RateLimiter | None = None,
        cache: Cache | None = None,
    ) -> ChatClient: ...
    def create_many(self, bodies: list[Any]) -> asyncio.Future[list[Any]]: ...
    def batch_fn(self) -> _NativeFn: ...
    def stream(
        self, body: Any, *, first_token_timeout: float = 600.0, idle_timeout: float = 120.0
    ) -> _ChatStream: ...
    def stream_stats(self) -> dict[str, Any]: ...
    def usage(self) -> dict[str, Any]: ...
    @property
    def base_url(self) -> str: ...

@final
class _ChatStream:
    """A streamed chat answer (see ferrobatch._stream)."""

    def next_ready(self) -> list[dict[str, Any]]: ...
    def next_many(self) -> ItemFuture[list[dict[str, Any]]]: ...
    def next_many_blocking(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...
    def response(self) -> dict[str, Any] | None: ...
    def usage(self) -> dict[str, Any] | None: ...
    def time_to_first_chunk(self) -> float | None: ...

@final
class TestServer:
    def __new__(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        dimensions: int = 1536,
        max_inputs: int = 2048,
        gemini_max_inputs: int = 100,
        api_key: str | None = None,
        requests_per_minute: int | None = None,
        base64: bool = True,
        error_style: str = "openai",
        batch_duration: float = 0.2,
        cancel_delay: float = 0.1,
    ) -> TestServer: ...
    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def latency(self) -> float: ...
    @latency.setter
    def latency(self, value: float) -> None: ...
    def add_fault(
        self,
        kind: str,
        *,
        times: int = 1,
        path: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        retry_delay: float | None = None,
        duration: float = 3600.0,
        done: int = 0,
    ) -> None: ...
    def clear_faults(self) -> None: ...
    def pending_faults(self) -> int: ...
    def requests(self) -> list[Any]: ...
    def request_count(self) -> int: ...
    def clear_requests(self) -> None: ...
    def stop(self) -> None: ...

def fake_embedding(text: str, dimensions: int) -> list[float]: ...

@final
class JobStore:
    def __new__(cls, location: str) -> JobStore: ...
    @property
    def location(self) -> str: ...
    @property
    def engine(self) -> str: ...
    def schema_version(self) -> int: ...
    def create_job(
        self,
        job_id: str,
        name: str | None,
        endpoint: str,
        settings: str | None,
        input_hash: str | None,
        requests: list[tuple[str, Any]],
        *,
        gemini_batch: bool = False,
        embeddings: tuple[Any, Any] | None = None,
    ) -> None: ...
    def create_job_from(
        self, input: JobInput, job_id: str, name: str | None, settings: str | None
    ) -> None: ...
    def job(self, job_id: str) -> dict[str, Any]: ...
    def jobs(self) -> list[dict[str, Any]]: ...
    def find_by_input(self, input_hash: str) -> dict[str, Any] | None: ...
    def set_status(self, job_id: str, status: str, error: str | None = None) -> None: ...
    def cancel(self, job_id: str) -> int: ...
    def reset_failed(self, job_id: str, cancelled: bool = False) -> int: ...
    def progress(self, job_id: str) -> dict[str, Any]: ...
    def results(self, job_id: str) -> list[tuple[int, str, str, str | None, str | None]]: ...
    def held_by(self, job_id: str) -> list[tuple[str, int]]: ...
    def write_results(self, job_id: str, path: str) -> int: ...
    def results_jsonl(self, job_id: str) -> bytes: ...
    def provider_batches(self, job_id: str) -> list[dict[str, Any]]: ...

@final
class JobRunner:
    def __new__(
        cls,
        store: JobStore,
        client: EmbeddingsClient | ChatClient,
        *,
        lease_seconds: float,
        window: int,
        concurrency: int,
        flush_interval: float,
        flush_max: int,
        patience: float,
        host: str,
        batch_api: Mapping[str, Any] | None = None,
    ) -> JobRunner: ...
    @property
    def id(self) -> str: ...
    def run(self, job_id: str) -> asyncio.Future[str]: ...
    def work(
        self, job_ids: list[str] | None = None, until_idle: bool = True
    ) -> asyncio.Future[None]: ...
    def stop(self) -> asyncio.Future[None]: ...

@final
class JobWorker:
    """Works every unfinished job of a store through clients made from each job's settings
    (`ferrobatch work`)."""

    def __new__(
        cls,
        store: JobStore,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        rate_limiter: RateLimiter | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        lease_seconds: float = 60.0,
        flush_interval: float = 0.1,
        flush_max: int = 1000,
        patience: float = 300.0,
        host: str,
        batch_api: Mapping[str, Any] | None = None,
        cache: Cache | None = None,
    ) -> JobWorker: ...
    def work(
        self, job_ids: list[str] | None = None, until_idle: bool = False
    ) -> asyncio.Future[int]: ...
    def stop(self) -> asyncio.Future[None]: ...

def _store_suite(location: str) -> None: ...
def _oneshot_probe(size: int, via: str) -> asyncio.Future[list[int]]: ...
def estimate_requests(
    endpoint: str, bodies: list[str], default_model: str
) -> list[tuple[str, int, int, int]]: ...

@final
class JobInput:
    """A checked OpenAI Batch API input file; its requests stay in Rust."""

    @property
    def endpoint(self) -> str: ...
    @property
    def input_hash(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def dimensions(self) -> int | None: ...
    def __len__(self) -> int: ...
    def estimate(self, default_model: str) -> list[tuple[str, int, int, int]]: ...

def read_job_input(
    path: str | os.PathLike[str],
    label: str,
    *,
    batch_api: bool = False,
    batch_provider: str | None = None,
    base_url: str | None = None,
) -> JobInput: ...
def provider_facts(name: str) -> dict[str, Any]: ...
def detect_provider(endpoint: str, base_url: str | None = None) -> str: ...
def provider_base_url(name: str, base_url: str | None = None) -> str: ...
def provider_key(name: str, base_url: str, api_key: str | None = None) -> str | None: ...
