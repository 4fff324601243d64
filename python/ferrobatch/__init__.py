"""ferrobatch: fast, fault-safe asyncio batching with a Rust core.

`await batcher.process(item)` queues the item in a Rust engine that forms batches by size or
time, runs your batch function, and resolves each caller with its own result or error.
`ferrobatch.openai` and `ferrobatch.gemini` hold batchers that do the whole HTTP path in Rust;
`ferrobatch.testing` holds a fake server to test them against.
"""

from ferrobatch._batcher import AsyncBatcher, BatchedFunction, ItemFuture, batch
from ferrobatch._native import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatcherStats,
    BatcherStoppedError,
    BatchSizeMismatchError,
    Cache,
    CacheError,
    ConfigError,
    ConflictError,
    DuplicateRequestIdError,
    FerrobatchError,
    InternalServerError,
    InvalidBatchResultError,
    InvalidInputError,
    ItemTimeoutError,
    JobNotFoundError,
    LatencySummary,
    NotFoundError,
    PermissionDeniedError,
    ProviderBatchError,
    QueueFullError,
    RateLimiter,
    RateLimitError,
    RateLimiterUnavailableError,
    ResponseFormatError,
    ResponseTooLargeError,
    StopTimeoutError,
    StoreError,
    StreamError,
    UnprocessableEntityError,
    WrongEventLoopError,
    __version__,
)
from ferrobatch._stream import ChatStream, ChatStreamSync

#: Alias for users switching from the `async-batcher` package.
QueueFullException = QueueFullError
#: Alias for users switching from the `async-batcher` package.
AsyncBatchException = FerrobatchError

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncBatchException",
    "AsyncBatcher",
    "AuthenticationError",
    "BadRequestError",
    "BatchSizeMismatchError",
    "BatchedFunction",
    "BatcherStats",
    "BatcherStoppedError",
    "Cache",
    "CacheError",
    "ChatStream",
    "ChatStreamSync",
    "ConfigError",
    "ConflictError",
    "DuplicateRequestIdError",
    "FerrobatchError",
    "InternalServerError",
    "InvalidBatchResultError",
    "InvalidInputError",
    "ItemFuture",
    "ItemTimeoutError",
    "JobNotFoundError",
    "LatencySummary",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderBatchError",
    "QueueFullError",
    "QueueFullException",
    "RateLimitError",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "StopTimeoutError",
    "StoreError",
    "StreamError",
    "UnprocessableEntityError",
    "WrongEventLoopError",
    "__version__",
    "batch",
]
