"""A batcher for Anthropic's Messages API: `Messages`, one HTTP request per item.

```python
m = Messages(model="claude-sonnet-4-5")          # key from ANTHROPIC_API_KEY
resp = await m.create(messages=[{"role": "user", "content": "hi"}], max_tokens=256)
resp["content"][0]["text"]
```

Retries follow the official SDK: 408, 409, 429 and 5xx (529, overloaded, included), the
server's `x-should-retry` first, `retry-after-ms` then `retry-after`; a 429 for a spent quota
(`enforced_spend_limit_reached`) is not retried. Usage counts cached input tokens as input;
their cost uses the cache prices (`prices={"claude-...": {"input": 3, "output": 15,
"cache_write": 3.75, "cache_read": 0.3}}`; without them 1.25 and 0.1 times the input price).

Rate limits: Anthropic meters requests, input tokens and output tokens per minute apart.
`rate_limiter=RateLimiter(requests_per_minute=RPM, tokens_per_minute=ITPM)` with
`output_rate_limiter=RateLimiter(tokens_per_minute=OTPM)`: each request then takes its
estimated input from the first and its `max_tokens` from the second, and gives back what the
usage shows it did not use. Without `output_rate_limiter`, `tokens_per_minute` counts input
plus `max_tokens`, as for OpenAI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ferrobatch._http import (
    MAX_RESPONSE_BYTES,
    BatcherOptions,
    Prices,
    RequestBatcher,
    merged_headers,
    transport_options,
)
from ferrobatch._native import (
    Cache,
    ChatClient,
    ItemFuture,
    RateLimiter,
    provider_base_url,
    provider_facts,
    provider_key,
)
from ferrobatch._stream import ChatStream, ChatStreamSync

__all__ = ["API_VERSION", "DEFAULT_BASE_URL", "Messages"]

_FACTS = provider_facts("anthropic")
#: The official endpoint. `ANTHROPIC_BASE_URL` overrides it when `base_url` is not given,
#: with the official SDK's meaning: the host (`https://api.anthropic.com`), to which `/v1` is
#: added; a URL that already ends in `/v1` is taken as it is. `base_url=` reads the same way.
DEFAULT_BASE_URL: str = _FACTS["default_base_url"]
#: The `anthropic-version` header sent.
API_VERSION = "2023-06-01"


class Messages(RequestBatcher):
    """Batched `POST {base_url}/messages`: one HTTP request per item, `concurrency` at a
    time, each response returned as a dict. Body fields other than `messages` and
    `max_tokens` pass through untouched (`system`, `temperature`, `tools`, ...).

    With `cache=Cache(...)` every request is answered from the cache when the same body
    (canonical JSON: key order aside, every field counts) was answered before; see
    docs/guides/cache.md. Without it nothing is cached."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_batch_size: int = 1,
        max_queue_time: float | Literal["auto"] = 0.0,
        concurrency: int = 16,
        max_queue_size: int = -1,
        on_full: Literal["reject", "wait"] = "reject",
        item_timeout: float | None = None,
        max_latency: float | None = None,
        aging: float | None = 1.0,
        max_retries: int = 2,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 600.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        rate_limiter: RateLimiter | None = None,
        output_rate_limiter: RateLimiter | None = None,
        prices: Prices | None = None,
        cache: Cache | None = None,
    ) -> None:
        url = provider_base_url("anthropic", base_url)
        key = provider_key("anthropic", url, api_key)
        options = transport_options(
            base_url=url,
            api_key=key,
            headers=merged_headers(headers, **{"anthropic-version": API_VERSION}),
            timeout=timeout,
            max_retries=max_retries,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            max_response_bytes=max_response_bytes,
            rate_limiter=rate_limiter,
            prices=prices,
        )
        client = ChatClient(
            model,
            transport=options,
            provider="anthropic",
            output_rate_limiter=output_rate_limiter,
            cache=cache,
        )
        batcher: BatcherOptions = {
            "max_batch_size": max_batch_size,
            "max_queue_time": max_queue_time,
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "on_full": on_full,
            "item_timeout": item_timeout,
            "max_latency": max_latency,
            "aging": aging,
        }
        super().__init__(client, model, batcher, prices)

    def create(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        max_tokens: int | None = None,
        priority: int = 0,
        cache: bool = True,
        **body: Any,
    ) -> ItemFuture[dict[str, Any]]:
        """Queue one Messages request; a Future of the response dict.

        `messages`, `max_tokens` (required by the API) and every other keyword form the
        request body (`model` defaults to the batcher's). Raises TypeError at once when
        `messages` or `max_tokens` is missing. With a `cache` given to the constructor,
        `cache=False` sends this request even if its answer is cached, and does not store it.
        """
        if max_tokens is None and "max_tokens" not in body:
            raise TypeError("create() needs max_tokens=...")
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self._queue(messages, body, priority, cache)

    def stream(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        max_tokens: int | None = None,
        first_token_timeout: float = 600.0,
        idle_timeout: float = 120.0,
        **body: Any,
    ) -> ChatStream:
        """A streamed Messages answer: `async with msgs.stream(messages=..., max_tokens=...)
        as s: async for event in s: ...`; each event a dict with its `type` (pings skipped).
        `max_tokens` is reserved in the rate limit until the usage settles it."""
        if max_tokens is None and "max_tokens" not in body:
            raise TypeError("stream() needs max_tokens=...")
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return super().stream(
            messages, first_token_timeout=first_token_timeout, idle_timeout=idle_timeout, **body
        )

    def stream_sync(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        max_tokens: int | None = None,
        first_token_timeout: float = 600.0,
        idle_timeout: float = 120.0,
        **body: Any,
    ) -> ChatStreamSync:
        """`stream()` for callers on plain threads (an ordinary, blocking iterator)."""
        if max_tokens is None and "max_tokens" not in body:
            raise TypeError("stream_sync() needs max_tokens=...")
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return super().stream_sync(
            messages, first_token_timeout=first_token_timeout, idle_timeout=idle_timeout, **body
        )
