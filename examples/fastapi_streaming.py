"""A FastAPI endpoint that streams chat answers through ferrobatch: one rate limit, retries
and usage for every stream, and a client that hangs up closes the upstream stream at once.

`POST /ask {"question": ...}` answers with `text/plain` pieces as they arrive
(`StreamingResponse`). Upstream is the shipped fake server here; point `base_url` at yours.

    python examples/fastapi_streaming.py        # serve on a free port, ask, print, stop
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ferrobatch import RateLimiter
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer


class Ask(BaseModel):
    question: str


upstream = FakeServer()
chat = ChatCompletions(
    "gpt-4o-mini",
    base_url=upstream.openai_base_url,  # or https://api.openai.com/v1 with OPENAI_API_KEY
    api_key="sk-example",
    rate_limiter=RateLimiter(requests_per_minute=600, tokens_per_minute=200_000),
    prices={"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
)
app = FastAPI()


@app.post("/ask")
async def ask(req: Ask) -> StreamingResponse:
    async def pieces() -> AsyncIterator[str]:
        # Leaving this generator (the client hung up) closes the upstream stream.
        async with chat.stream(messages=[{"role": "user", "content": req.question}]) as s:
            async for chunk in s:
                if chunk["choices"]:
                    yield chunk["choices"][0]["delta"].get("content") or ""

    return StreamingResponse(pieces(), media_type="text/plain")


async def main() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}/ask"
    async with aiohttp.ClientSession() as http:
        questions = [f"question {i}: what does batching save?" for i in range(8)]

        async def read(q: str) -> str:
            async with http.post(url, json={"question": q}) as r:
                return "".join([piece.decode() async for piece in r.content.iter_any()])

        answers = await asyncio.gather(*(read(q) for q in questions))
        for q, a in zip(questions[:2], answers):
            print(f"{q} -> {a}")
        # A client that reads one piece and hangs up.
        async with http.post(url, json={"question": "a long answer, please"}) as r:
            await r.content.readany()
    await asyncio.sleep(0.2)
    server.should_exit = True
    await serving
    await chat.stop()
    stats, usage = chat.stream_stats(), chat.usage()["gpt-4o-mini"]
    print(
        "streams:",
        stats["streams"],
        f"p99 first chunk {stats['time_to_first_chunk'].p99 * 1e3:.1f} ms",
    )
    tokens = f"tokens in {usage['input_tokens']}, out {usage['output_tokens']}"
    print(f"{tokens}, cost ${usage['cost']:.6f}")
    assert all(a.startswith("fake reply") for a in answers)
    ended = stats["streams"]["completed"] + stats["streams"]["cancelled"]
    assert stats["streams"]["completed"] >= 8 and ended == 9
    with contextlib.suppress(Exception):
        upstream.close()


if __name__ == "__main__":
    asyncio.run(main())
