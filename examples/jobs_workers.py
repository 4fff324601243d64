"""One job, three worker processes, one PostgreSQL store.

Starts the fake server and a throwaway PostgreSQL (Debian package `postgresql`), submits
1,000 chat requests, and runs `ferrobatch work` three times at once, as you would on three
hosts. Every request ends exactly once, whichever worker ran it.

    python examples/jobs_workers.py
"""

import asyncio
import os
import subprocess
import sys

from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer
from ferrobatch.testing.postgres import PostgresServer


async def main() -> None:
    with FakeServer(latency=0.02) as server, PostgresServer() as pg:
        dsn = pg.create_database()  # in production: postgresql://user:password@host/db
        store = JobStore(dsn)

        # Submit without running (what `ferrobatch submit FILE --store DSN` does).
        chat = ChatCompletions("gpt-4o-mini", base_url=server.openai_base_url, api_key="demo")
        manager = JobManager(chat, store)
        requests = [
            JobRequest(id=f"review-{i}", body={"messages": [{"role": "user", "content": f"{i}"}]})
            for i in range(1000)
        ]
        job = await manager.create_job(requests, name="reviews", start=False)
        await chat.stop()
        print(f"submitted {job.id}: {job.total} requests")

        # Three workers, as on three hosts.
        worker = [sys.executable, "-m", "ferrobatch.cli", "work", "--store", dsn]
        worker += ["--base-url", server.openai_base_url, "--until-idle", "--concurrency", "8"]
        env = {**os.environ, "OPENAI_API_KEY": "demo"}
        procs = [subprocess.Popen(worker, env=env, stderr=subprocess.DEVNULL) for _ in range(3)]
        for p in procs:
            p.wait()

        p = store.progress(job.id)
        print(f"{store.job(job.id).status.value}: {p.succeeded} succeeded, {p.failed} failed")
        assert p.succeeded == job.total
        results = store.results(job.id)
        print("first answer:", results[0].response["choices"][0]["message"]["content"])
        print("requests the server saw:", server.request_count())


asyncio.run(main())
