"""Ray Data stages that call AI APIs through ferrobatch: `Embed` and `Chat`, callable classes
for `Dataset.map_batches`.

```python
import ray
from ferrobatch.integrations.ray import Embed

ds = ray.data.read_text("docs/")
ds = ds.map_batches(
    Embed,
    fn_constructor_kwargs={
        "model": "text-embedding-3-small",
        "requests_per_minute": 3000,
        "redis_url": "redis://redis.internal:6379/0",   # one budget for the whole cluster
        "cache": "redis://redis.internal:6379/1",       # a rerun pays for nothing twice
    },
    concurrency=8,
    batch_size=256,
)
```

Each actor holds one ferrobatch batcher, made on the actor's event loop on first use; every
row of a block is sent through it at once (the batcher forms the requests). With
`redis_url`, every actor's requests go through one limiter in Redis, so the cluster keeps one
budget and a 429 pauses every actor. A row that fails (a 400 on that input, retries spent)
gets its error in the `error` column (`"RateLimitError: ..."`) and the block goes on;
`on_error="raise"` fails the block instead. With a shared `cache`, rows whose answers are
cached are not sent again. Keys come from the provider's environment variable in each
actor (or `api_key_env`), never from the constructor's arguments, which Ray stores.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Literal

from ferrobatch._native import Cache, RateLimiter

__all__ = ["Chat", "Embed", "usage_totals"]


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _Stage(ABC):
    """What `Embed` and `Chat` share: settings, a client per actor, per-row outcomes."""

    def __init__(
        self,
        *,
        model: str,
        column: str,
        provider: str,
        base_url: str | None,
        api_key_env: str | None,
        concurrency: int,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        burst: float | None,
        redis_url: str | None,
        limit_name: str | None,
        cache: str | None,
        cache_namespace: str | None,
        on_error: Literal["column", "raise"],
        error_column: str,
        max_retries: int,
        prices: Mapping[str, Mapping[str, float]] | None,
    ) -> None:
        if on_error not in ("column", "raise"):
            raise ValueError(f"on_error must be 'column' or 'raise', got {on_error!r}")
        if redis_url and not (requests_per_minute or tokens_per_minute):
            raise ValueError(
                "redis_url shares a limit: give requests_per_minute or tokens_per_minute"
            )
        self.model, self.column, self.provider = model, column, provider
        self.base_url, self.api_key_env = base_url, api_key_env
        self.concurrency, self.max_retries = concurrency, max_retries
        self.rpm, self.tpm, self.burst = requests_per_minute, tokens_per_minute, burst
        self.redis_url, self.limit_name = redis_url, limit_name
        self.cache_location, self.cache_namespace = cache, cache_namespace
        self.on_error, self.error_column = on_error, error_column
        self.prices = {k: dict(v) for k, v in prices.items()} if prices else None
        self._client: Any = None

    def _common(self) -> dict[str, Any]:
        limiter = None
        if self.rpm or self.tpm:
            name = self.limit_name or f"ferrobatch-ray:{self.provider}:{self.model}"
            limiter = RateLimiter(
                requests_per_minute=self.rpm,
                tokens_per_minute=self.tpm,
                redis_url=self.redis_url,
                name=name if self.redis_url else None,
                burst=self.burst,
            )
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        cache = (
            Cache(self.cache_location, namespace=self.cache_namespace)
            if self.cache_location
            else None
        )
        return {
            "base_url": self.base_url,
            "api_key": key,
            "concurrency": self.concurrency,
            "rate_limiter": limiter,
            "max_retries": self.max_retries,
            "prices": self.prices,
            "cache": cache,
        }

    @abstractmethod
    def _make(self) -> Any:
        """The stage's ferrobatch batcher (`Embed`: an embeddings client; `Chat`: a chat one)."""

    def client(self) -> Any:
        """This actor's ferrobatch batcher (made on first use, on the actor's event loop)."""
        if self._client is None:
            self._client = self._make()
        return self._client

    def _errors(self, outcomes: list[Any]) -> list[str | None]:
        errors = [_error_text(o) if isinstance(o, BaseException) else None for o in outcomes]
        if self.on_error == "raise":
            for o in outcomes:
                if isinstance(o, BaseException):
                    raise o
        return errors

    def usage(self) -> dict[str, Any]:
        """This actor's usage per model (requests, tokens, cost, cached requests, ...)."""
        return dict(self._client.usage()) if self._client is not None else {}


class Embed(_Stage):
    """`ds.map_batches(Embed, fn_constructor_kwargs={"model": ...}, concurrency=N,
    batch_size=256)`: the text column (`column`, default "text") in, a vector column
    (`output_column`, default "embedding"; None for a failed row) and the `error` column out.
    `provider` is "openai" (any OpenAI-compatible server) or "gemini"."""

    def __init__(
        self,
        *,
        model: str = "text-embedding-3-small",
        column: str = "text",
        output_column: str = "embedding",
        provider: Literal["openai", "gemini"] = "openai",
        base_url: str | None = None,
        api_key_env: str | None = None,
        dimensions: int | None = None,
        concurrency: int = 8,
        max_batch_size: int = 256,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst: float | None = None,
        redis_url: str | None = None,
        limit_name: str | None = None,
        cache: str | None = None,
        cache_namespace: str | None = None,
        on_error: Literal["column", "raise"] = "column",
        error_column: str = "error",
        max_retries: int = 5,
        prices: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__(
            model=model,
            column=column,
            provider=provider,
            base_url=base_url,
            api_key_env=api_key_env,
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            burst=burst,
            redis_url=redis_url,
            limit_name=limit_name,
            cache=cache,
            cache_namespace=cache_namespace,
            on_error=on_error,
            error_column=error_column,
            max_retries=max_retries,
            prices=prices,
        )
        self.output_column, self.dimensions, self.max_batch_size = (
            output_column,
            dimensions,
            max_batch_size,
        )

    def _make(self) -> Any:
        if self.provider == "gemini":
            from ferrobatch.gemini import Embeddings as GeminiEmbeddings

            return GeminiEmbeddings(
                self.model,
                output_dimensionality=self.dimensions,
                max_batch_size=self.max_batch_size,
                max_queue_time=0.005,
                **self._common(),
            )
        from ferrobatch.openai import Embeddings

        return Embeddings(
            self.model,
            dimensions=self.dimensions,
            max_batch_size=self.max_batch_size,
            max_queue_time=0.005,
            **self._common(),
        )

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        emb = self.client()
        texts = [str(t) for t in batch[self.column]]
        outcomes = await asyncio.gather(*(emb.embed(t) for t in texts), return_exceptions=True)
        errors = self._errors(outcomes)
        out = dict(batch)
        out[self.output_column] = [
            None if isinstance(o, BaseException) else list(o) for o in outcomes
        ]
        out[self.error_column] = errors
        return out


class Chat(_Stage):
    """`ds.map_batches(Chat, fn_constructor_kwargs={"model": ...}, ...)`: a prompt column
    (`column`, default "prompt": a string, or a list of message dicts) in; the response text
    (`output_column`, default "response"), `input_tokens`, `output_tokens` and `error` out.
    `provider` is "openai" (any OpenAI-compatible server) or "anthropic"; `params` go in
    every request body (`temperature`, `max_tokens`, `system`, ...)."""

    def __init__(
        self,
        *,
        model: str,
        column: str = "prompt",
        output_column: str = "response",
        provider: Literal["openai", "anthropic"] = "openai",
        base_url: str | None = None,
        api_key_env: str | None = None,
        params: Mapping[str, Any] | None = None,
        concurrency: int = 16,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst: float | None = None,
        redis_url: str | None = None,
        limit_name: str | None = None,
        cache: str | None = None,
        cache_namespace: str | None = None,
        on_error: Literal["column", "raise"] = "column",
        error_column: str = "error",
        max_retries: int = 5,
        prices: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__(
            model=model,
            column=column,
            provider=provider,
            base_url=base_url,
            api_key_env=api_key_env,
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            burst=burst,
            redis_url=redis_url,
            limit_name=limit_name,
            cache=cache,
            cache_namespace=cache_namespace,
            on_error=on_error,
            error_column=error_column,
            max_retries=max_retries,
            prices=prices,
        )
        self.output_column = output_column
        self.params = dict(params or {})
        if provider == "anthropic" and "max_tokens" not in self.params:
            raise ValueError("provider='anthropic' needs params={'max_tokens': ...}")

    def _make(self) -> Any:
        if self.provider == "anthropic":
            from ferrobatch.anthropic import Messages

            return Messages(self.model, **self._common())
        from ferrobatch.openai import ChatCompletions

        return ChatCompletions(self.model, **self._common())

    @staticmethod
    def _messages(prompt: Any) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return [dict(m) for m in prompt]

    def _text(self, response: dict[str, Any]) -> str:
        if self.provider == "anthropic":
            return "".join(b.get("text", "") for b in response.get("content", []))
        choices = response.get("choices") or [{}]
        return str(choices[0].get("message", {}).get("content") or "")

    def _tokens(self, response: dict[str, Any]) -> tuple[int, int]:
        u = response.get("usage") or {}
        if self.provider == "anthropic":
            return int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
        return int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        chat = self.client()
        calls = [chat.create(messages=self._messages(p), **self.params) for p in batch[self.column]]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        errors = self._errors(outcomes)
        out = dict(batch)
        ok = [None if isinstance(o, BaseException) else o for o in outcomes]
        out[self.output_column] = [None if r is None else self._text(r) for r in ok]
        tokens = [(0, 0) if r is None else self._tokens(r) for r in ok]
        out["input_tokens"] = [t[0] for t in tokens]
        out["output_tokens"] = [t[1] for t in tokens]
        out[self.error_column] = errors
        return out


def usage_totals(
    ds: Any, prices: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, Any]:
    """The whole pipeline's tokens from a `Chat` stage's output (`input_tokens` and
    `output_tokens` summed over rows), rows that failed, and the cost at `prices` for the
    stage's model when given (`{"model": {"input": usd_per_1m, "output": usd_per_1m}}`)."""
    rows = ds.count()
    input_tokens = int(ds.sum("input_tokens") or 0) if rows else 0
    output_tokens = int(ds.sum("output_tokens") or 0) if rows else 0
    failed = 0
    if rows:
        counted = ds.select_columns(["error"]).map_batches(
            lambda b: {"failed": [int(b["error"].notna().sum())]}, batch_format="pandas"
        )
        failed = int(counted.sum("failed") or 0)
    out: dict[str, Any] = {
        "rows": rows,
        "failed_rows": failed,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    if prices:
        ((_, p),) = prices.items()
        out["cost"] = (input_tokens * p["input"] + output_tokens * p.get("output", 0.0)) / 1e6
    return out
