"""The pytest plugin ferrobatch registers: the `fake_ai_server` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ferrobatch.testing import FakeServer


@pytest.fixture
def fake_ai_server() -> Iterator[FakeServer]:
    """A fresh `FakeServer` on 127.0.0.1 (no latency, no faults), stopped after the test."""
    with FakeServer() as server:
        yield server
