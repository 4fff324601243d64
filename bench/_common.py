"""What the client benchmarks share: an event-loop stall meter and the fake server in a
subprocess (so the CPU time a benchmark measures is the client's alone)."""

from __future__ import annotations

import asyncio
import subprocess
import sys


async def ticker(stop: asyncio.Event, worst: list[float]) -> None:
    """Sleep 1 ms at a time until `stop`; `worst[0]` is how late a wake-up came, at most."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], loop.time() - t - 0.001)


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """`python -m ferrobatch.testing` with `latency`; the process and its OpenAI base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferrobatch.testing", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ferrobatch fake server: "):
        proc.kill()
        raise SystemExit(f"the fake server did not start: {line!r}")
    return proc, line.split(": ", 1)[1].strip() + "/v1"


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
