"""Type stubs of the native extension module `ferrobatch._native`."""

import asyncio
from collections.abc import Iterable
from typing import Any, Callable, Final, final

__all__ = [
    "Batch",
    "BatchSizeMismatchError",
    "BatcherStats",
    "BatcherStoppedError",
    "ConfigError",
    "Core",
    "FerrobatchError",
    "InvalidBatchResultError",
    "ItemTimeoutError",
    "LatencySummary",
    "QueueFullError",
    "StopTimeoutError",
    "WrongEventLoopError",
    "__version__",
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
    ) -> Core: ...
    def process(self, item: Any, priority: int = 0) -> asyncio.Future[Any]: ...
    def process_many(
        self, items: Iterable[Any], priority: int = 0
    ) -> asyncio.Future[list[Any]]: ...
    def close(self, force: bool) -> None: ...
    def drain_waiter(self) -> asyncio.Future[None] | None: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def event_loop(self) -> asyncio.AbstractEventLoop | None: ...
    def stats(self) -> BatcherStats: ...
