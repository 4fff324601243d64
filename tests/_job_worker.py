"""A worker process for the crash test: runs one job from a store until it is killed.

python tests/_job_worker.py STORE BASE_URL N LEASE_SECONDS
"""

from __future__ import annotations

import asyncio
import sys

from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions


async def main(store_path: str, base_url: str, n: int, lease: float) -> None:
    chat = ChatCompletions("fake", base_url=base_url, api_key="k", concurrency=4)
    manager = JobManager(chat, JobStore(store_path), lease_seconds=lease, window=8)
    reqs = [
        JobRequest(id=f"r{i}", body={"messages": [{"role": "user", "content": f"item {i}"}]})
        for i in range(n)
    ]
    job = await manager.create_job(reqs, name="crash")
    print(job.id, flush=True)
    await manager.wait(job.id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
