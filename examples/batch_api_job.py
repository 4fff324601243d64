"""A half-price bulk job through a provider's batch API (here OpenAI's, faked).

Starts the fake server, whose batches take a second, estimates the job's cost, runs 3,000
chat requests as three provider batches in a SQLite store, and shows what each batch did. One
batch expires after 400 requests, as real ones do: what it finished is kept, the rest go into
a new batch. With a real key, drop the FakeServer and the base_url.

    python examples/batch_api_job.py
"""

import asyncio
import os
import tempfile

from ferrobatch.jobs import JobManager, JobRequest, JobStore
from ferrobatch.openai import ChatCompletions
from ferrobatch.testing import FakeServer


async def main() -> None:
    with FakeServer(batch_duration=1.0) as server, tempfile.TemporaryDirectory() as tmp:
        server.fault("batch_expire", done=400, path="/v1/batches")  # the first batch expires
        chat = ChatCompletions(
            "gpt-4o-mini",
            base_url=server.openai_base_url,
            api_key="demo",
            prices={"gpt-4o-mini": {"input": 0.15, "output": 0.60}},  # USD per 1M tokens
        )
        manager = JobManager(
            chat,
            JobStore(os.path.join(tmp, "jobs.db")),
            via="batch-api",
            batch_requests=1000,  # OpenAI allows 50,000; small here to show several batches
            poll_interval=0.2,  # 60 s by default
        )
        requests = [
            JobRequest(
                id=f"review-{i}",
                body={
                    "messages": [{"role": "user", "content": f"Label review {i}: great value"}],
                    "max_tokens": 20,
                },
            )
            for i in range(3000)
        ]
        estimate = manager.estimate(requests)
        print(f"estimate: {estimate.requests} requests, at most ${estimate.max_cost:.4f}")

        job = await manager.create_job(requests, name="reviews")
        job = await manager.wait(job.id)
        progress = await manager.progress(job.id)
        print(f"job {job.status.value}: {progress.succeeded} succeeded, {progress.failed} failed")
        print(f"cost at batch prices: ${progress.cost:.6f}")
        for b in manager.store.provider_batches(job.id):
            print(f"  batch {b.number}: {b.requests} requests, {b.remote_status}")
        first = (await manager.get_results(job.id))[0]
        print(first.id, "->", first.response["choices"][0]["message"]["content"])
        await manager.close()
        await chat.stop()


if __name__ == "__main__":
    asyncio.run(main())
