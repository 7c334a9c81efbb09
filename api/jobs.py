"""The one runner of the service's background jobs: indexing (api/index_jobs.py), clusters
(api/cluster_jobs.py) and refresh (api/refresh.py) each own one `JobRunner`.

A runner holds one job of its kind at a time: `claim` refuses a second one (`JobBusy`), `spawn`
runs the job as a task on the event loop (its blocking work in a worker thread, `in_thread`) and
frees the runner when it ends, `should_stop` is what the job polls between steps, and `stop`
asks it to stop and waits for it at shutdown. What a job reports (progress, status) stays the
job's own record; a job whose record outlives the process (clusters) reads as "interrupted"
after a restart. A process that runs no jobs (an HTTP worker of DINOSERVE_SERVE__WORKERS > 1)
answers every start with `JobsUnavailable`; api/errors.py maps both to their statuses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class JobBusy(RuntimeError):
    """A job of this kind (`kind`: index, clusters, refresh) is already running."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class JobsUnavailable(RuntimeError):
    """This process runs no jobs: the message says where they run instead."""


class JobRunner:
    """One job at a time of one kind (see the module docstring).

    Args:
        kind: what the runner runs, as `JobBusy.kind` names it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.busy = False  # set and cleared on the event loop only
        self.task: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    def claim(self, message: str) -> None:
        """Take the runner for a job, or refuse with `message` (JobBusy) while one runs."""
        if self.busy:
            raise JobBusy(self.kind, message)
        self.busy = True

    def release(self) -> None:
        self.busy = False

    def spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a claimed job as a task; the runner is free again when it ends."""

        async def run() -> None:
            try:
                await job
            finally:
                self.release()

        self.task = asyncio.create_task(run())
        return self.task

    def should_stop(self) -> bool:
        """True once `stop` was called: a job polls it between steps."""
        return self._stop.is_set()

    @staticmethod
    async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The job's blocking work, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def request_stop(self) -> None:
        """From now on `should_stop` is True."""
        self._stop.set()

    async def stop(self, wait_s: float | None = None) -> None:
        """At shutdown: ask a running job to stop and wait for it (at most `wait_s`)."""
        self.request_stop()
        if self.task is not None:
            if wait_s is None:
                await self.task
            else:
                await asyncio.wait({self.task}, timeout=wait_s)
