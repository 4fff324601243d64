"""`RedisServer`: a throwaway redis-server on a free loopback port, for tests of limits shared
through Redis. It runs the installed `redis-server` binary (Debian package `redis-server`)
with no persistence, its files in a temporary directory, and is killed on exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from ferrobatch.testing._service import Service, free_port

__all__ = ["RedisServer", "RedisUnavailable"]


class RedisUnavailable(RuntimeError):
    """redis-server is not installed."""


class RedisServer(Service):
    """`with RedisServer() as r: RateLimiter(..., redis_url=r.url, name="x")`.

    `stop()` kills it (to test an outage) and `start()` brings it back on the same port.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server is not installed (Debian package: redis-server)")
        self._binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="ferrobatch-redis-")
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (SIGKILL): an outage as clients see one."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
