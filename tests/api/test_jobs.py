"""api/jobs.py: the one job runner — one job at a time, freed when the job ends, asked to stop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.jobs import JobBusy, JobRunner


def test_one_job_at_a_time_and_free_again_when_it_ends() -> None:
    async def scenario() -> None:
        runner, release = JobRunner("index"), asyncio.Event()
        runner.claim("busy")
        with pytest.raises(JobBusy) as refused:
            runner.claim("an indexing job is running (job x)")
        assert refused.value.kind == "index" and str(refused.value).endswith("(job x)")

        async def job() -> None:
            await release.wait()

        task = runner.spawn(job())
        await asyncio.sleep(0)
        assert runner.busy
        release.set()
        await task
        assert not runner.busy
        runner.claim("free again")

    asyncio.run(scenario())


def test_a_failing_job_frees_the_runner() -> None:
    async def scenario() -> None:
        runner = JobRunner("clusters")
        runner.claim("")

        async def job() -> None:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await runner.spawn(job())
        assert not runner.busy

    asyncio.run(scenario())


def test_stop_asks_the_thread_and_waits_for_it() -> None:
    async def scenario() -> list[str]:
        runner, seen = JobRunner("refresh"), []
        started = threading.Event()

        def work() -> None:  # a worker thread's loop, polling between steps
            started.set()
            while not runner.should_stop():
                threading.Event().wait(0.01)
            seen.append("stopped")

        runner.claim("")
        runner.spawn(runner.in_thread(work))
        await asyncio.to_thread(started.wait)
        await runner.stop()
        assert not runner.busy
        return seen

    assert asyncio.run(scenario()) == ["stopped"]
