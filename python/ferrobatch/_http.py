"""What the HTTP batchers share: settings resolution and the embedding batcher's body.

Each batcher is an `AsyncBatcher` whose batch function is native: the whole batch goes to
Rust in one call (HTTP, retries, rate limits, JSON) and comes back as one list with a value or
an exception instance per item.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict, TypeVar

from ferrobatch._batcher import AsyncBatcher
from ferrobatch._native import (
    ChatClient,
    EmbeddingsClient,
    ItemFuture,
    RateLimiter,
    _NativeFn,
    _Uncached,
)
from ferrobatch._stream import ChatStream, ChatStreamSync

__all__ = [
    "MAX_RESPONSE_BYTES",
    "BatcherOptions",
    "EmbeddingsBase",
    "HttpBatcher",
    "ModelUsage",
    "RequestBatcher",
    "Vector",
    "transport_options",
]

T = TypeVar("T")
S = TypeVar("S")

#: An embedding: a list of floats; a float32 numpy array with format="numpy"; an
#: `array.array("f")` with format="array".
Vector = Any

Prices = Mapping[str, Mapping[str, float]]

#: The default `max_response_bytes`: the most of one successful answer a client reads (256 MiB,
#: about twice the largest documented answer). A larger answer fails its items with
#: `ResponseTooLargeError` as soon as the cap is passed; the rest is never read. Error bodies are
#: read up to 64 KiB.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class ModelUsage(TypedDict):
    """What one model has used: requests whose answer was used, retried attempts, requests
    that failed for good, tokens, the cost in USD (None without a price for the model), and
    error answers by HTTP status (every attempt). With a `Cache`: the items answered from it
    (`cached_requests`; for embeddings, texts), the input tokens they used when they were paid
    for, and what they would have cost (`saved_cost`); `cost` and `input_tokens` count only
    what was sent."""

    requests: int
    retries: int
    failed_requests: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    error_statuses: dict[int, int]
    cached_requests: int
    cached_input_tokens: int
    saved_cost: float | None


class BatcherOptions(TypedDict, total=False):
    """The `AsyncBatcher` keywords every HTTP batcher takes."""

    max_batch_size: int
    max_queue_time: float | Literal["auto"]
    concurrency: int
    max_queue_size: int
    on_full: Literal["reject", "wait"]
    item_timeout: float | None
    max_latency: float | None
    aging: float | None
    dedupe: bool


def merged_headers(headers: Mapping[str, str] | None, **named: str | None) -> dict[str, str]:
    out = dict(headers or {})
    for name, value in named.items():
        if value is not None:
            out[name] = value
    return out


def check_texts(texts: Iterable[Any]) -> list[str]:
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return out


class HttpBatcher(AsyncBatcher[T, S]):
    """What every HTTP batcher shares: its native client, model, prices and usage."""

    _client: EmbeddingsClient | ChatClient

    def __init__(
        self,
        client: EmbeddingsClient | ChatClient,
        model: str,
        options: BatcherOptions,
        prices: Prices | None = None,
    ) -> None:
        self._client = client
        self.model = model
        #: USD per 1M tokens per model, as given (used by `ferrobatch.jobs` for per-request cost).
        self.prices: dict[str, dict[str, float]] = {k: dict(v) for k, v in (prices or {}).items()}
        super().__init__(**options)

    def _native_batch_fn(self) -> _NativeFn | None:
        # The client's own batch function runs natively, unless a subclass overrides
        # `process_batch`, which then runs in Python as with any batcher.
        if type(self).process_batch in (EmbeddingsBase.process_batch, RequestBatcher.process_batch):
            return self._client.batch_fn()
        return None

    def usage(self) -> dict[str, ModelUsage]:
        """Requests, retries, failed requests, tokens and cost, per model."""
        usage: dict[str, ModelUsage] = self._client.usage()
        return usage

    @property
    def base_url(self) -> str:
        return self._client.base_url

    def __repr__(self) -> str:
        state = "running" if self._core.accepting else "stopped"
        return (
            f"<{type(self).__name__} {state} model={self.model!r} base_url={self.base_url!r} "
            f"max_batch_size={self.max_batch_size} concurrency={self.concurrency}>"
        )


class EmbeddingsBase(HttpBatcher[str, Vector]):
    """An embedding batcher: `await emb.embed(text)` gives that text's vector."""

    _client: EmbeddingsClient

    # Identical texts in flight are embedded once (`dedupe=True`, the default); each later
    # caller gets its own copy of the vector, so one caller's in-place change never shows up
    # in another's.
    @staticmethod
    def _dedupe_copy(vector: Vector) -> Vector:
        return copy.copy(vector)

    def __init__(
        self,
        client: EmbeddingsClient,
        model: str,
        options: BatcherOptions,
        prices: Prices | None = None,
        dimensions: int | None = None,
    ) -> None:
        #: The vector length asked for (None: the model's default).
        self.dimensions = dimensions
        super().__init__(client, model, options, prices)

    async def process_batch(self, batch: list[str]) -> list[Vector | BaseException]:
        result: list[Vector | BaseException] = await self._client.embed(batch)
        return result

    def embed(self, text: str, priority: int = 0) -> ItemFuture[Vector]:
        """Queue one text; a Future of its vector. Raises TypeError for a non-str at once."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        fut: ItemFuture[Vector] = self._core.process(text, priority)
        return fut

    def process(self, item: str, priority: int = 0) -> ItemFuture[Vector]:
        """Same as `embed` (the `AsyncBatcher` spelling)."""
        return self.embed(item, priority)

    def embed_many(self, texts: Iterable[str], priority: int = 0) -> ItemFuture[list[Vector]]:
        """Queue many texts; one Future of their vectors in order (it fails with the first
        error, like `asyncio.gather`)."""
        fut: ItemFuture[list[Vector]] = self._core.process_many(check_texts(texts), priority)
        return fut

    def process_many(self, items: Iterable[str], priority: int = 0) -> ItemFuture[list[Vector]]:
        """Same as `embed_many`."""
        return self.embed_many(items, priority)


class RequestBatcher(HttpBatcher[dict[str, Any], dict[str, Any]]):
    """A batcher of whole request bodies, one HTTP request per item (chat, Messages): with
    the default `max_batch_size=1` each call resolves as soon as its own response arrives."""

    _single_item_batches = True
    _client: ChatClient

    async def process_batch(self, batch: list[dict[str, Any]]) -> list[Any]:
        result: list[Any] = await self._client.create_many(batch)
        return result

    @staticmethod
    def _body(
        messages: Iterable[Mapping[str, Any]] | None, body: dict[str, Any], what: str
    ) -> dict[str, Any]:
        if messages is None and "messages" not in body:
            raise TypeError(f"{what}() needs messages=[...]")
        if messages is not None:
            if isinstance(messages, (str, bytes, Mapping)):
                raise TypeError(f"messages must be a list of message dicts, got {messages!r:.60}")
            body["messages"] = [dict(m) for m in messages]
        return body

    def _queue(
        self,
        messages: Iterable[Mapping[str, Any]] | None,
        body: dict[str, Any],
        priority: int,
        cache: bool = True,
    ) -> ItemFuture[dict[str, Any]]:
        body = self._body(messages, body, "create")
        item: Any = body if cache else _Uncached(body)
        fut: ItemFuture[dict[str, Any]] = self._core.process(item, priority)
        return fut

    def stream(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        first_token_timeout: float = 600.0,
        idle_timeout: float = 120.0,
        **body: Any,
    ) -> ChatStream:
        """A streamed answer: `async with batcher.stream(messages=...) as s: async for
        chunk in s: ...`. It goes through the same rate limiter, retries (only before the
        first chunk reaches you), usage and cost as `create()`, but not through the batch
        queue or the result cache. `first_token_timeout` bounds the wait for the first chunk,
        `idle_timeout` every gap after it (seconds; `APITimeoutError`). See
        docs/guides/streaming.md."""
        native = self._client.stream(
            self._body(messages, body, "stream"),
            first_token_timeout=first_token_timeout,
            idle_timeout=idle_timeout,
        )
        return ChatStream(native)

    def stream_sync(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        first_token_timeout: float = 600.0,
        idle_timeout: float = 120.0,
        **body: Any,
    ) -> ChatStreamSync:
        """`stream()` for callers on plain threads: an ordinary iterator that blocks. Never
        call it on an event loop's thread (it raises RuntimeError there)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("stream_sync() blocks: on an event loop, use stream()")
        native = self._client.stream(
            self._body(messages, body, "stream_sync"),
            first_token_timeout=first_token_timeout,
            idle_timeout=idle_timeout,
        )
        return ChatStreamSync(native)

    def stream_stats(self) -> dict[str, Any]:
        """This batcher's streams: `streams` by outcome (completed, failed, cancelled),
        `time_to_first_chunk` and `chunk_gap` (LatencySummary), `output_tokens` streamed."""
        out: dict[str, Any] = self._client.stream_stats()
        return out

    def process(self, item: dict[str, Any], priority: int = 0) -> ItemFuture[dict[str, Any]]:
        """Queue one whole request body (a dict with `messages`)."""
        if not isinstance(item, dict):
            raise TypeError(f"a request body must be a dict, got {type(item).__name__}")
        fut: ItemFuture[dict[str, Any]] = self._core.process(item, priority)
        return fut


def transport_options(
    *,
    base_url: str,
    api_key: str | None,
    headers: Mapping[str, str] | None,
    timeout: float,
    max_retries: int,
    initial_backoff: float,
    max_backoff: float,
    max_response_bytes: int,
    rate_limiter: RateLimiter | None,
    prices: Prices | None,
) -> dict[str, Any]:
    """The `transport` settings every native client takes, as one dict."""
    return {
        "base_url": base_url,
        "api_key": api_key,
        "headers": dict(headers) if headers else None,
        "timeout": timeout,
        "max_retries": max_retries,
        "initial_backoff": initial_backoff,
        "max_backoff": max_backoff,
        "max_response_bytes": max_response_bytes,
        "rate_limiter": rate_limiter,
        "prices": {k: dict(v) for k, v in prices.items()} if prices else None,
    }
