"""Batchers for OpenAI-compatible APIs (OpenAI, Azure-style gateways, vLLM, Ollama, DeepSeek,
... any `base_url`): `Embeddings` and `ChatCompletions`.

```python
emb = Embeddings(model="text-embedding-3-small")     # key from OPENAI_API_KEY
vec = await emb.embed("hello")
chat = ChatCompletions(model="deepseek-chat", base_url="https://api.deepseek.com/v1", api_key=...)
resp = await chat.create(messages=[{"role": "user", "content": "hi"}], temperature=0.2)
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ferrobatch._http import (
    MAX_RESPONSE_BYTES,
    BatcherOptions,
    EmbeddingsBase,
    Prices,
    RequestBatcher,
    merged_headers,
    transport_options,
)
from ferrobatch._native import (
    Cache,
    ChatClient,
    EmbeddingsClient,
    ItemFuture,
    RateLimiter,
    provider_base_url,
    provider_facts,
    provider_key,
)

__all__ = ["DEFAULT_BASE_URL", "ChatCompletions", "Embeddings"]

_FACTS = provider_facts("openai")
#: The official endpoint; `OPENAI_BASE_URL` overrides it when `base_url` is not given.
DEFAULT_BASE_URL: str = _FACTS["default_base_url"]


def _base_url(base_url: str | None) -> str:
    return provider_base_url("openai", base_url)


class Embeddings(EmbeddingsBase):
    """Batched `POST {base_url}/embeddings`: one HTTP request per batch (split to stay within
    `max_inputs_per_request` and `max_tokens_per_request`), vectors matched by `index`.

    Vectors travel as base64 float32 (`encoding_format="base64"`, decoded in Rust; a server
    that refuses it is asked for floats from then on). `format="numpy"` gives writable float32
    numpy arrays instead of lists, and `format="array"` gives stdlib `array.array("f")` (one
    buffer per vector, no numpy needed, zero-copy into numpy or torch). An input the server
    rejects by position (`param: "input[3]"`) fails alone; the rest are sent again.
    Identical texts waiting or in flight are sent once (`dedupe=True`, the default); each
    caller gets its own copy of the vector.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        headers: Mapping[str, str] | None = None,
        dimensions: int | None = None,
        format: Literal["list", "numpy", "array"] = "list",
        encoding_format: Literal["base64", "float"] = "base64",
        user: str | None = None,
        max_batch_size: int = 256,
        max_queue_time: float | Literal["auto"] = 0.02,
        concurrency: int = 8,
        max_queue_size: int = -1,
        on_full: Literal["reject", "wait"] = "reject",
        item_timeout: float | None = None,
        max_latency: float | None = None,
        aging: float | None = 1.0,
        dedupe: bool = True,
        cache: Cache | None = None,
        max_retries: int = 2,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        rate_limiter: RateLimiter | None = None,
        prices: Prices | None = None,
        max_inputs_per_request: int = 2048,
        max_tokens_per_request: int = 300_000,
    ) -> None:
        url = _base_url(base_url)
        key = provider_key("openai", url, api_key)
        client = EmbeddingsClient(
            "openai",
            model,
            transport=transport_options(
                base_url=url,
                api_key=key,
                headers=merged_headers(
                    headers, **{"OpenAI-Organization": organization, "OpenAI-Project": project}
                ),
                timeout=timeout,
                max_retries=max_retries,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                max_response_bytes=max_response_bytes,
                rate_limiter=rate_limiter,
                prices=prices,
            ),
            dimensions=dimensions,
            encoding_format=encoding_format,
            max_inputs_per_request=max_inputs_per_request,
            max_tokens_per_request=max_tokens_per_request,
            task_type=None,
            title=None,
            user=user,
            format=format,
            cache=cache,
        )
        options: BatcherOptions = {
            "max_batch_size": max_batch_size,
            "max_queue_time": max_queue_time,
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "on_full": on_full,
            "item_timeout": item_timeout,
            "max_latency": max_latency,
            "aging": aging,
            "dedupe": dedupe,
        }
        super().__init__(client, model, options, prices, dimensions)


class ChatCompletions(RequestBatcher):
    """Batched `POST {base_url}/chat/completions`: one HTTP request per item (the API takes
    one conversation per request), `concurrency` at a time, each response returned as a dict.

    Body fields other than `messages` pass through untouched (`temperature`, `tools`,
    `response_format`, ...). With the default `max_batch_size=1` each call resolves as soon as
    its own response arrives; a larger batch sends its items concurrently and resolves them
    together, trading latency for fewer crossings into Python.

    With `cache=Cache(...)` every request is answered from the cache when the same body
    (canonical JSON: key order aside, every field counts) was answered before; see
    docs/guides/cache.md. Without it nothing is cached.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
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
        prices: Prices | None = None,
        cache: Cache | None = None,
    ) -> None:
        url = _base_url(base_url)
        key = provider_key("openai", url, api_key)
        client = ChatClient(
            model,
            transport=transport_options(
                base_url=url,
                api_key=key,
                headers=merged_headers(
                    headers, **{"OpenAI-Organization": organization, "OpenAI-Project": project}
                ),
                timeout=timeout,
                max_retries=max_retries,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                max_response_bytes=max_response_bytes,
                rate_limiter=rate_limiter,
                prices=prices,
            ),
            cache=cache,
        )
        options: BatcherOptions = {
            "max_batch_size": max_batch_size,
            "max_queue_time": max_queue_time,
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "on_full": on_full,
            "item_timeout": item_timeout,
            "max_latency": max_latency,
            "aging": aging,
        }
        super().__init__(client, model, options, prices)

    def create(
        self,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        priority: int = 0,
        cache: bool = True,
        **body: Any,
    ) -> ItemFuture[dict[str, Any]]:
        """Queue one chat completion request; a Future of the response dict.

        `messages` and every other keyword form the request body (`model` defaults to the
        batcher's). Raises TypeError at once when `messages` is missing. With a `cache` given
        to the constructor, `cache=False` sends this request even if its answer is cached,
        and does not store it.
        """
        return self._queue(messages, body, priority, cache)
