"""What the throwaway servers of `ferrobatch.testing` share: a free loopback port, and
`with Server() as s:` closing them on exit."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

S = TypeVar("S", bound="Service")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service(ABC):
    """A server that `close()` stops and removes; usable as a context manager."""

    @abstractmethod
    def close(self) -> None:
        """Stop the server and remove its files."""

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
