"""A FastAPI embeddings service that batches concurrent requests, with Prometheus metrics.

`POST /embed {"text": ...}` awaits `batcher.process(text)`: requests arriving together share
one call of the model. The "model" here is a stand-in with the cost shape of a small one on
one accelerator: one call at a time, 2 ms a call plus 20 µs a text, fake vectors (use yours).
`GET /metrics` is the Prometheus text format, `ferrobatch_*` series included.

    python examples/fastapi_embeddings.py                # serve, load it, print, stop
    python examples/fastapi_embeddings.py --serve --port 8000 [--mode direct]

`--mode direct` calls the model once per request instead (the baseline in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from ferrobatch import AsyncBatcher, metrics
from ferrobatch.testing import fake_embedding

DIMENSIONS = 64
MODE = "batched"  # or "direct": set by --mode


class Model:
    """One call at a time: 2 ms a call plus 20 µs a text."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        async with self.lock:
            await asyncio.sleep(0.002 + 0.00002 * len(texts))
        return [fake_embedding(t, DIMENSIONS) for t in texts]


class EmbedRequest(BaseModel):
    text: str


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    model = Model()
    batcher = AsyncBatcher(model, max_batch_size=128, max_queue_time=0.002)
    metrics.track(batcher, name="embed")
    metrics.enable_prometheus()
    app.state.model, app.state.batcher = model, batcher
    yield
    await batcher.stop()


app = FastAPI(lifespan=lifespan)


@app.post("/embed")
async def embed(req: EmbedRequest) -> dict[str, list[float]]:
    if MODE == "direct":
        (vector,) = await app.state.model([req.text])
    else:
        vector = await app.state.batcher.process(req.text)
    return {"embedding": vector}


@app.get("/metrics")
def prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# --- running it -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(port: int, mode: str) -> subprocess.Popen[bytes]:
    """The service under uvicorn in its own process; returns once it answers."""
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--mode", mode]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the service did not start")


async def load(url: str, n: int, concurrency: int) -> tuple[list[float], float, list[dict]]:
    """`n` requests, `concurrency` at a time, over real HTTP (aiohttp): latencies, wall time,
    bodies."""
    import aiohttp

    latencies: list[float] = []
    bodies: list[dict] = [{}] * n
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one(i: int) -> None:
            async with gate:
                t = time.perf_counter()
                async with session.post("/embed", json={"text": f"document {i}"}) as r:
                    r.raise_for_status()
                    bodies[i] = await r.json()
                latencies.append(time.perf_counter() - t)

        begun = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        return latencies, time.perf_counter() - begun, bodies


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serve", action="store_true")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", choices=("batched", "direct"), default="batched")
    p.add_argument("-n", type=int, default=2000)
    args = p.parse_args()
    if args.serve:
        import uvicorn

        global MODE
        MODE = args.mode
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return
    port = free_port()
    proc = start(port, args.mode)
    try:
        url = f"http://127.0.0.1:{port}"
        latencies, wall, bodies = asyncio.run(load(url, args.n, concurrency=64))
        assert all(len(b["embedding"]) == DIMENSIONS for b in bodies)
        p50, p99 = pct(latencies, 0.5) * 1e3, pct(latencies, 0.99) * 1e3
        print(f"{args.n} requests: {args.n / wall:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        import urllib.request

        with urllib.request.urlopen(url + "/metrics") as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(("ferrobatch_items_submitted", "ferrobatch_batches_total")):
                print(line)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
