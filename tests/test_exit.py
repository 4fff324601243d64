"""Interpreter exit with batchers, clients and job runners alive: nothing may panic or print.

Each case runs in its own interpreter; its stderr must be empty and its exit code as asked.
Callers await their items in tasks (as a service's request handlers do), which `asyncio.run`
cancels when `main` returns.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ferrobatch.testing import FakeServer

SYNC_BATCH = """
    import asyncio, sys, time
    from ferrobatch import AsyncBatcher
    def slow(xs):
        time.sleep(0.3)
        return xs
    b = AsyncBatcher(slow, max_batch_size=2)
    async def call(f):
        return await f
    async def main():
        asyncio.create_task(call(b.process(1))); asyncio.create_task(call(b.process(2)))
        await asyncio.sleep(0.05)            # the batch is running in the executor
        {end}
    asyncio.run(main())
"""

CASES = {
    "an unused module-level batcher": """
        from ferrobatch import AsyncBatcher
        def dbl(xs): return [x * 2 for x in xs]
        b = AsyncBatcher(dbl, max_batch_size=64)
        raise SystemExit(0)
    """,
    "an unused @batch function": """
        from ferrobatch import batch
        @batch(max_batch_size=8)
        async def dbl(xs): return [x * 2 for x in xs]
    """,
    "an item queued when the loop ends": """
        import asyncio
        from ferrobatch import AsyncBatcher
        def dbl(xs): return [x * 2 for x in xs]
        b = AsyncBatcher(dbl, max_batch_size=64, max_queue_time=0.3)
        async def main():
            b.process(1)                     # its window ends after the loop has closed
            await asyncio.sleep(0.01)
        asyncio.run(main())
        import time; time.sleep(0.5)         # the window passes while Python still runs
    """,
    "an item queued at exit": """
        import asyncio
        from ferrobatch import AsyncBatcher
        def dbl(xs): return [x * 2 for x in xs]
        b = AsyncBatcher(dbl, max_batch_size=64, max_queue_time=5)
        async def main():
            b.process(1)
            await asyncio.sleep(0.01)
        asyncio.run(main())
    """,
    "a sync batch running in a thread": SYNC_BATCH.format(end=""),
    "SystemExit while a sync batch runs": SYNC_BATCH.format(end="sys.exit(3)"),
    "HTTP clients with requests in flight": """
        import asyncio, sys
        from ferrobatch.openai import ChatCompletions, Embeddings
        url = sys.argv[1]
        emb = Embeddings("m", base_url=url, api_key="k", max_queue_time=0.001)
        chat = ChatCompletions("m", base_url=url, api_key="k")
        async def call(f):
            return await f
        async def main():
            for f in [emb.embed("a"), emb.embed("b"),
                      chat.create(messages=[{"role": "user", "content": "hi"}])]:
                asyncio.create_task(call(f))
            await asyncio.sleep(0.1)         # the server answers after 0.3 s
        asyncio.run(main())
    """,
    "HTTP answers arriving after the loop ended": """
        import asyncio, sys, time
        from ferrobatch.openai import Embeddings
        emb = Embeddings("m", base_url=sys.argv[1], api_key="k", max_queue_time=0.001)
        async def call(f):
            return await f
        async def main():
            asyncio.create_task(call(emb.embed("a")))
            await asyncio.sleep(0.1)
        asyncio.run(main())
        time.sleep(0.5)                      # the answer lands while Python still runs
    """,
    "HTTP answers landing while the interpreter finalizes": """
        import asyncio, sys
        from ferrobatch.openai import ChatCompletions
        chat = ChatCompletions("m", base_url=sys.argv[1], api_key="k", concurrency=64)
        garbage = [[i] for i in range(1_000_000)]   # finalizing it takes a while
        async def call(f):
            return await f
        async def main():
            for i in range(64):
                msg = [{"role": "user", "content": str(i)}]
                asyncio.create_task(call(chat.create(messages=msg)))
            await asyncio.sleep(0.28)        # the answers come at 0.3 s, as Python exits
        asyncio.run(main())
    """,
    "a job runner mid-job": """
        import asyncio, sys, tempfile, os
        from ferrobatch.jobs import JobManager, JobRequest, JobStore
        from ferrobatch.openai import ChatCompletions
        chat = ChatCompletions("m", base_url=sys.argv[1], api_key="k", concurrency=4)
        store = JobStore(os.path.join(tempfile.mkdtemp(), "jobs.db"))
        manager = JobManager(chat, store)
        async def main():
            body = lambda i: {"messages": [{"role": "user", "content": str(i)}]}
            reqs = [JobRequest(id=f"r{i}", body=body(i)) for i in range(200)]
            await manager.create_job(reqs)
            await asyncio.sleep(0.5)         # the job is running
        asyncio.run(main())
    """,
}

EXIT_CODES = {"SystemExit while a sync batch runs": 3}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_is_silent(case: str, tmp_path: Path) -> None:
    script = tmp_path / "case.py"
    script.write_text(textwrap.dedent(CASES[case]))
    with FakeServer(latency=0.3, dimensions=4) as server:
        proc = subprocess.run(
            [sys.executable, str(script), server.openai_base_url],
            capture_output=True,
            text=True,
            timeout=60,
            env={"RUST_BACKTRACE": "1", "PATH": ""},
        )
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == EXIT_CODES.get(case, 0)
