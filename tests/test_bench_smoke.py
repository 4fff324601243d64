"""The core benchmark must keep running: a smoke run with small N (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "core.py"


def test_core_benchmark_smoke_run() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for section in ("Throughput", "divided by", "Low load", "Memory"):
        assert section in text, text
    assert "| ferrobatch " in text and "| asyncio floor " in text


def test_adaptive_benchmark_smoke_run() -> None:
    bench = BENCH.parent / "adaptive.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "auto p99 / best fixed p99" in out.stdout, out.stdout
    assert "| auto: p50 / p99 ms, items/s" in out.stdout
