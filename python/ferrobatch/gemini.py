"""A batcher for the Gemini API's `batchEmbedContents`.

```python
g = Embeddings(model="gemini-embedding-001", task_type="RETRIEVAL_DOCUMENT",
               output_dimensionality=768)     # key from GEMINI_API_KEY, then GOOGLE_API_KEY
vec = await g.embed("hello")
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from ferrobatch._http import (
    MAX_RESPONSE_BYTES,
    BatcherOptions,
    EmbeddingsBase,
    Prices,
    transport_options,
)
from ferrobatch._native import (
    Cache,
    EmbeddingsClient,
    RateLimiter,
    provider_facts,
    provider_key,
)

__all__ = ["DEFAULT_BASE_URL", "Embeddings"]

_FACTS = provider_facts("gemini")
#: The official endpoint.
DEFAULT_BASE_URL: str = _FACTS["default_base_url"]
#: As the google-genai SDK: GOOGLE_API_KEY first when both are set.


class Embeddings(EmbeddingsBase):
    """Batched `POST {base_url}/models/{model}:batchEmbedContents` (key in the
    `x-goog-api-key` header): one call per batch, split at `max_inputs_per_request` (the API's
    cap is 100), vectors in input order.

    The API reports no token usage, so `usage()` counts tokens by the chars/4 estimate.
    Identical texts waiting or in flight are sent once (`dedupe=True`, the default); each
    caller gets its own copy of the vector.
    """

    def __init__(
        self,
        model: str = "gemini-embedding-001",
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        task_type: str | None = None,
        title: str | None = None,
        output_dimensionality: int | None = None,
        format: Literal["list", "numpy", "array"] = "list",
        max_batch_size: int = 100,
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
        max_inputs_per_request: int = 100,
        max_tokens_per_request: int = 300_000,
    ) -> None:
        key = provider_key("gemini", base_url, api_key)
        client = EmbeddingsClient(
            "gemini",
            model,
            transport=transport_options(
                base_url=base_url,
                api_key=key,
                headers=headers,
                timeout=timeout,
                max_retries=max_retries,
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                max_response_bytes=max_response_bytes,
                rate_limiter=rate_limiter,
                prices=prices,
            ),
            dimensions=output_dimensionality,
            encoding_format="float",
            max_inputs_per_request=max_inputs_per_request,
            max_tokens_per_request=max_tokens_per_request,
            task_type=task_type,
            title=title,
            user=None,
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
        super().__init__(client, model, options, prices, output_dimensionality)
