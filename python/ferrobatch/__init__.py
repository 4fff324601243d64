"""ferrobatch: fast, fault-safe asyncio batching with a Rust core.

`await batcher.process(item)` queues the item in a Rust engine that forms batches by size or
time, runs your batch function, and resolves each caller with its own result or error.
"""

from ferrobatch._batcher import AsyncBatcher, BatchedFunction, batch
from ferrobatch._native import (
    BatcherStats,
    BatcherStoppedError,
    BatchSizeMismatchError,
    ConfigError,
    FerrobatchError,
    InvalidBatchResultError,
    ItemTimeoutError,
    LatencySummary,
    QueueFullError,
    StopTimeoutError,
    WrongEventLoopError,
    __version__,
)

#: Alias for users switching from the `async-batcher` package.
QueueFullException = QueueFullError
#: Alias for users switching from the `async-batcher` package.
AsyncBatchException = FerrobatchError

__all__ = [
    "AsyncBatchException",
    "AsyncBatcher",
    "BatchSizeMismatchError",
    "BatchedFunction",
    "BatcherStats",
    "BatcherStoppedError",
    "ConfigError",
    "FerrobatchError",
    "InvalidBatchResultError",
    "ItemTimeoutError",
    "LatencySummary",
    "QueueFullError",
    "QueueFullException",
    "StopTimeoutError",
    "WrongEventLoopError",
    "__version__",
    "batch",
]
