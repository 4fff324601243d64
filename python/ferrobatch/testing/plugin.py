"""The pytest plugin ferrobatch registers: the `fake_ai_server` and `redis_server` fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ferrobatch.testing import FakeServer
from ferrobatch.testing.redis import RedisServer, RedisUnavailable


@pytest.fixture
def fake_ai_server() -> Iterator[FakeServer]:
    """A fresh `FakeServer` on 127.0.0.1 (no latency, no faults), stopped after the test."""
    with FakeServer() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free loopback port, killed after the test. Skips (naming
    the Debian package) when redis-server is missing, unless FERROBATCH_REQUIRE_SERVICES is
    set, as CI sets it: then a missing server fails the test."""
    try:
        server = RedisServer()
    except RedisUnavailable as e:
        if os.environ.get("FERROBATCH_REQUIRE_SERVICES"):
            pytest.fail(f"{e}, and FERROBATCH_REQUIRE_SERVICES is set")
        pytest.skip(str(e))
    with server:
        yield server
