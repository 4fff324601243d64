"""The pytest plugin ferrobatch registers: the `fake_ai_server`, `redis_server`,
`postgres_server` and `postgres_dsn` fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ferrobatch.testing import FakeServer
from ferrobatch.testing.postgres import PostgresServer, PostgresUnavailable
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
        unavailable(e)
        raise
    with server:
        yield server


def unavailable(e: Exception) -> None:
    """Skip a test for want of a service, naming it; fail instead when
    FERROBATCH_REQUIRE_SERVICES is set (as CI sets it)."""
    if os.environ.get("FERROBATCH_REQUIRE_SERVICES"):
        pytest.fail(f"{e}, and FERROBATCH_REQUIRE_SERVICES is set")
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL on a free loopback port for the whole session. Skips (naming
    the Debian package) when its binaries are missing, unless FERROBATCH_REQUIRE_SERVICES is
    set, as CI sets it: then a missing server fails the test."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        unavailable(e)
        raise
    with server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh empty database on the session's PostgreSQL."""
    return postgres_server.create_database()
