"""Typing checks of the jobs API (mypy --strict; never run)."""

from __future__ import annotations

import sys

from ferrobatch.jobs import (
    Job,
    JobManager,
    JobProgress,
    JobRequest,
    JobResult,
    JobStatus,
    JobStore,
)
from ferrobatch.openai import ChatCompletions

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover
    from typing_extensions import assert_type


async def use(chat: ChatCompletions) -> None:
    async with JobManager(client=chat, store=JobStore("batches.db")) as manager:
        job = await manager.create_job([JobRequest(id="r1", body={"messages": []})], name="x")
        assert_type(job, Job)
        assert_type(await manager.get_status(job.id), JobStatus)
        assert_type(await manager.progress(job.id), JobProgress)
        assert_type(await manager.get_results(job.id), list[JobResult])
        assert_type(await manager.cancel(job.id), int)
        assert_type(await manager.wait(job.id, progress=True), Job)
        assert_type(await manager.retry_failed(job.id), int)
        assert_type(await manager.resume(), list[Job])
        assert_type(manager.list_jobs(), list[Job])
