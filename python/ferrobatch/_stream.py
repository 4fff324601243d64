"""Streamed chat answers: the typed face of the native `_ChatStream`.

Chunks already received are taken without a thread hop; only when none is there does the
iterator await the runtime, which hands over every chunk received by then in one crossing;
the iterator hands them out one by one. Leaving `async with`, `break`, or cancelling the task
closes the connection at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from ferrobatch._native import ItemFuture, _ChatStream

__all__ = ["ChatStream", "ChatStreamSync"]


class _Base:
    def __init__(self, native: _ChatStream) -> None:
        self._native = native
        self._buf: deque[dict[str, Any]] = deque()
        self._done = False

    @property
    def response(self) -> dict[str, Any] | None:
        """The answer so far in the provider's non-streaming shape (OpenAI: a
        `chat.completion` with the joined content, finish_reason, tool calls and usage;
        Anthropic: a Message with its content blocks, stop_reason and usage). Complete once
        the iteration has ended; None before the request was sent."""
        out: dict[str, Any] | None = self._native.response()
        return out

    @property
    def usage(self) -> dict[str, Any] | None:
        """`{"input_tokens", "output_tokens", "estimated"}`: as the server reported them (the
        last report; never a sum), or estimated (`estimated: True`) when the stream ended
        without them. None before the request was sent."""
        out: dict[str, Any] | None = self._native.usage()
        return out

    @property
    def time_to_first_chunk(self) -> float | None:
        """Seconds from the request to the first chunk."""
        return self._native.time_to_first_chunk()

    def _take(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        if not chunks:
            self._done = True
            raise StopIteration
        self._buf.extend(chunks)
        return self._buf.popleft()


class ChatStream(_Base):
    """`async with chat.stream(...) as s: async for chunk in s: ...`, or plainly
    `async for chunk in chat.stream(...)`. Each chunk is a dict exactly as the server sent
    it. Errors after the first chunk (a cut connection, a server's error event, a clock)
    raise from the iterator once every chunk received before them was handed out."""

    def __init__(self, native: _ChatStream) -> None:
        super().__init__(native)
        self._pending: ItemFuture[list[dict[str, Any]]] | None = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._buf:
            return self._buf.popleft()
        if self._done:
            raise StopAsyncIteration
        ready = self._native.next_ready()  # what is there already, without a thread hop
        if ready:
            return self._take(ready)
        fut: ItemFuture[list[dict[str, Any]]] = self._native.next_many()
        self._pending = fut
        try:
            chunks = await fut
        except asyncio.CancelledError:
            self.close()
            raise
        except BaseException:
            self._done = True
            raise
        finally:
            self._pending = None
        try:
            return self._take(chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def aclose(self) -> None:
        """Close the stream (as leaving `async with` does)."""
        self.close()

    def close(self) -> None:
        """Close the connection now; the stream settles from what was received."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()  # aborts the read under way
        self._done = True
        self._buf.clear()
        self._native.close()


class ChatStreamSync(_Base):
    """`with chat.stream_sync(...) as s: for chunk in s: ...` for callers on plain threads
    (it blocks; never call it on an event loop's thread)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._buf:
            return self._buf.popleft()
        if self._done:
            raise StopIteration
        try:
            chunks = self._native.next_many_blocking()
        except BaseException:
            self._done = True
            raise
        return self._take(chunks)

    def __enter__(self) -> ChatStreamSync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection now; the stream settles from what was received."""
        self._done = True
        self._buf.clear()
        self._native.close()
