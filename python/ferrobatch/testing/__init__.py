"""A fake AI API server on 127.0.0.1, for testing pipelines without spending money.

`FakeServer` speaks the OpenAI-compatible `/v1/embeddings` and `/v1/chat/completions`,
Anthropic's `/v1/messages` (the official `anthropic` SDK accepts it), Gemini's
`/v1beta/models/{model}:batchEmbedContents` and its OpenAI-compatible
`/v1beta/openai/chat/completions`, and the three providers' batch APIs: OpenAI's `/v1/files`
and `/v1/batches`, Anthropic's `/v1/messages/batches`, Gemini's `:batchGenerateContent` and
`/v1beta/batches` (the official `openai`, `anthropic` and `google-genai` SDKs accept them). A
batch answers its requests as the online routes would, and moves through its states over
`batch_duration` seconds (a fifth validating, then running, then ended); a cancel takes
`cancel_delay`. It runs in Rust on ferrobatch's own runtime, so it is never the bottleneck of
a benchmark.

Its answers are FAKE: an embedding is a unit vector drawn from a pseudo-random stream seeded
by a hash of the text (the same text always gives the same vector; meaning is not captured;
see `fake_embedding`), and a chat answer is "fake reply to: <last message>".

```python
with FakeServer(latency=0.02) as server:
    emb = Embeddings(base_url=server.openai_base_url, api_key="test")
    server.fault("status", status=429, retry_after=0.1)   # the next request gets a 429
    ...
    assert server.request_count() == 2
```

Scripted faults (`fault(kind, ...)`), applied in order to the next matching requests:
`"status"` (any status, with `retry_after` seconds, `retry_after_ms`, or Gemini's
`retry_delay`), `"reset"` (the connection is closed without an answer), `"hang"` (the answer
comes only after `duration` seconds), `"malformed"` (200 with truncated JSON), `"wrong_count"`
(one embedding too few; a chat answer without `choices`), and `"endless"` (a body that never
ends, with `status`, 200 by default, as a broken or hostile server might send), and the
`"batch_*"` kinds that script how the next batch ends, and the `"stream_*"` kinds that script
how the next streamed chat answer goes wrong (see `FakeServer.fault`). Chat and Messages
requests with `"stream": true` are answered as the real servers stream them (OpenAI chunks
then `[DONE]`, the usage chunk when `stream_options.include_usage` asks for it; Anthropic's
events with a `ping`). Any input
containing `REJECT_MARKER` is rejected alone with a 400 naming its position. With `api_key`
set, other keys get a 401 whose message echoes the key sent (as some servers do). With
`requests_per_minute` set, excess requests get a 429 with `retry-after-ms` and `x-ratelimit-*`
headers. With `base64=False`, embeddings requests asking for base64 get a 400 about
`encoding_format`, as some OpenAI-compatible servers answer. With `error_style="pydantic"`, the
OpenAI-compatible routes answer as a FastAPI server does: a rejected input is a `422 {"detail":
[{"type", "loc", "msg", "input"}]}` whose `loc` names it, other errors are `{"detail":
"text"}`.

With pytest, the `fake_ai_server` fixture (from the plugin this package registers) gives a
fresh server per test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ferrobatch._native import TestServer, fake_embedding
from ferrobatch.testing._service import Service

__all__ = ["REJECT_MARKER", "FakeServer", "LoggedRequest", "fake_embedding"]

#: Any input containing this text is rejected alone, with a 400 naming its position.
REJECT_MARKER = "ferrobatch:reject"

if TYPE_CHECKING:
    _FaultKind = Literal[
        "status",
        "reset",
        "hang",
        "malformed",
        "wrong_count",
        "endless",
        "batch_fail_validation",
        "batch_expire",
        "batch_status_zero",
        "batch_token_limit",
        "stream_cut",
        "stream_error",
        "stream_no_usage",
        "stream_slow_first",
        "stream_stall",
        "stream_long",
    ]


class LoggedRequest(TypedDict):
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    inputs: int
    status: int
    fault: str | None
    at: float


class FakeServer(Service):
    """A running fake server; a context manager that stops it on exit."""

    def __init__(
        self,
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
        error_style: Literal["openai", "pydantic"] = "openai",
        batch_duration: float = 0.2,
        cancel_delay: float = 0.1,
    ) -> None:
        self._server = TestServer(
            host=host,
            port=port,
            latency=latency,
            dimensions=dimensions,
            max_inputs=max_inputs,
            gemini_max_inputs=gemini_max_inputs,
            api_key=api_key,
            requests_per_minute=requests_per_minute,
            base64=base64,
            error_style=error_style,
            batch_duration=batch_duration,
            cancel_delay=cancel_delay,
        )
        self.dimensions = dimensions

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def openai_base_url(self) -> str:
        """The `base_url` for OpenAI-compatible clients: `{url}/v1`."""
        return self._server.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The `base_url` for `ferrobatch.anthropic.Messages`: `{url}/v1` (the official SDK
        takes `url` and adds `/v1` itself)."""
        return self._server.url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        """The `base_url` for Gemini clients: `{url}/v1beta`."""
        return self._server.url + "/v1beta"

    @property
    def latency(self) -> float:
        """Seconds added before every answer (settable)."""
        return self._server.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._server.latency = value

    def fault(
        self,
        kind: _FaultKind,
        *,
        times: int = 1,
        path: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        retry_delay: float | None = None,
        duration: float = 3600.0,
        done: int = 0,
    ) -> None:
        """Script a fault for the next `times` requests whose path contains `path`.

        The `batch_*` kinds script how the next batch created ends (other calls pass them
        by): `batch_fail_validation` (OpenAI `failed` with `invalid_json_line` on line 1;
        Gemini `BATCH_STATE_FAILED`), `batch_expire` (expired after `done` requests, with
        `batch_expired` lines / `expired` results for the rest; Gemini returns nothing),
        `batch_status_zero` (OpenAI `completed` with no output file and `status_code: 0`
        error lines), `batch_token_limit` (OpenAI `failed` with `token_limit_exceeded`).

        The `stream_*` kinds script the next chat or Messages answer, streamed: `stream_cut`
        (the body ends after `done` events, without its end event), `stream_error` (after
        `done` events an error event: OpenAI's error chunk, Anthropic's `overloaded_error`),
        `stream_no_usage` (no usage at all), `stream_slow_first` (the head at once, the first
        event after `duration` seconds), `stream_stall` (after `done` events, `duration`
        seconds of silence), `stream_long` (`done` chunks of 1 KiB of text, made as the
        client reads them)."""
        self._server.add_fault(
            kind,
            times=times,
            path=path,
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            retry_delay=retry_delay,
            duration=duration,
            done=done,
        )

    def clear_faults(self) -> None:
        self._server.clear_faults()

    def pending_faults(self) -> int:
        """Scripted fault hits not yet used."""
        return self._server.pending_faults()

    def requests(self, path: str | None = None) -> list[LoggedRequest]:
        """Every request received (whose path contains `path`), oldest first."""
        log: list[LoggedRequest] = self._server.requests()
        return [r for r in log if path is None or path in r["path"]]

    def request_count(self) -> int:
        return self._server.request_count()

    def clear_requests(self) -> None:
        self._server.clear_requests()

    def stop(self) -> None:
        """Stop serving; requests in progress are dropped."""
        self._server.stop()

    def close(self) -> None:
        """Same as `stop` (what `with FakeServer() as server:` calls on exit)."""
        self.stop()

    def __repr__(self) -> str:
        return f"FakeServer(url={self.url!r})"
