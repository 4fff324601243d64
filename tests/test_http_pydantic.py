"""A real FastAPI embeddings server (pydantic validation, under uvicorn on 127.0.0.1), as
self-hosted servers such as Infinity are: a 422 whose `detail[].input` echoes a text far
longer than the 64 KiB kept of an error body still names the bad input, which fails alone."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any

import pytest

fastapi = pytest.importorskip("fastapi", reason="needs fastapi (the test extra)")
uvicorn = pytest.importorskip("uvicorn", reason="needs uvicorn (the test extra)")
from pydantic import BaseModel, StringConstraints  # noqa: E402

import ferrobatch  # noqa: E402
from ferrobatch.openai import Embeddings  # noqa: E402

MAX_CHARS = 8192


class EmbeddingRequest(BaseModel):
    input: list[Annotated[str, StringConstraints(max_length=MAX_CHARS)]]
    model: str
    encoding_format: str = "float"


def app() -> Any:
    api = fastapi.FastAPI()
    sizes: list[int] = []

    @api.post("/v1/embeddings")
    def embed(req: EmbeddingRequest) -> dict[str, Any]:
        sizes.append(len(req.input))
        data = []
        for i, text in enumerate(req.input):
            vec = [float(len(text)), 1.0, 2.0]
            emb: Any = vec
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack("<3f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": req.model, "usage": {}}

    api.state.sizes = sizes
    return api


@pytest.fixture
def server() -> Iterator[tuple[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    application = app()
    srv = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1", application
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


async def test_a_huge_pydantic_422_fails_only_the_text_it_names(
    server: tuple[str, Any],
) -> None:
    url, application = server
    emb = Embeddings("m", base_url=url, api_key="k", max_queue_time=0.05, max_retries=0)
    long_text = "word " * 26_000  # 130 KB: the 422 echoes it whole
    texts = ["first", long_text, "third"]
    out = await asyncio.gather(*[emb.embed(t) for t in texts], return_exceptions=True)
    await emb.stop()
    assert out[0] == [5.0, 1.0, 2.0]
    assert out[2] == [5.0, 1.0, 2.0]
    err = out[1]
    assert isinstance(err, ferrobatch.UnprocessableEntityError), err
    assert err.status == 422
    assert err.param == "input[1]"
    assert "at most 8192 characters" in str(err)
    assert err.body is not None and len(err.body) <= 64 * 1024
    # The first request held all three; the retry sent only the two good texts.
    assert application.state.sizes == [2]
