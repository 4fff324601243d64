"""Shared fixtures for the test suite."""

from __future__ import annotations

import pytest

from _helpers import Recorder


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
