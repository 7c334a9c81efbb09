"""The admin adapter of the refresh job (refresh/job.py) inside the service, which owns the
embedded Qdrant: one operation at a time, the job in a worker thread, and the engine swap.

The order of a switch: catch-up passes while writes go on → writes held off (api/writes.py), a
last pass → start the new engine's batchers → commit (flip every alias in one call, move
CURRENT) → swap the served state (one assignment) → retire the old state once its requests end.
Requests search `<collection>__<their version>` directly, so they stay consistent between the
flip and the swap; the old collections stay until `models gc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from api.jobs import JobBusy, JobRunner, JobsUnavailable
from api.serving import Serving
from api.writes import WriteGate
from core.blobs import Blobs
from core.engines import Engine
from core.settings import Settings
from core.store import Store
from refresh import job as refresh_job
from refresh import versions
from refresh.job import Prepared, RefreshJob, RefreshStatus

log = logging.getLogger(__name__)


class Refresher:
    """The service's admin operations on the served model (see api/routes/admin.py).

    Args:
        q: the service's own store (the embedded one allows one process), batch retries.
        settings: the service settings.
        writes: the gate of collection writes, held closed for the last catch-up and the flip.
        serving: the served state now (read for its version).
        start: builds and starts the serving state of a new engine (its batchers).
        swap: serves a new state from the next request on; returns the old one.
    """

    def __init__(
        self,
        q: Store,
        settings: Settings,
        writes: WriteGate,
        serving: Callable[[], Serving],
        start: Callable[[Engine], Serving],
        swap: Callable[[Serving], Serving],
    ) -> None:
        self.q, self.settings, self.writes = q, settings, writes
        self._serving, self._start, self._swap = serving, start, swap
        self.status = RefreshStatus()
        self.runner = JobRunner("refresh")  # refresh, rollback and gc: one at a time
        self._watch: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._watch_failed: set[str] = set()

    @property
    def served(self) -> str:
        return self._serving().version

    def name_dir(self) -> Path:
        return versions.registry_dir(self.settings.models_dir, self.settings.model)

    def _claim(self) -> None:
        self.runner.claim(f"a refresh or rollback is running (job {self.status.job or '-'})")

    def start(self, version: str | None = None) -> RefreshStatus:
        """Begin a refresh to `version` (default: the newest version not served) and return.

        Raises:
            JobBusy: one is running.
            VersionError: unknown version, nothing to refresh to, or a pinned package path.
        """
        name_dir, served = self.name_dir(), self.served
        target = versions.refresh_target(name_dir, served, version)
        if target == served:
            raise versions.VersionError(f"{target} is already served")
        self._claim()
        status = RefreshStatus.begin(uuid.uuid4().hex[:12], served, target)
        job = RefreshJob(
            self.q, self.settings, name_dir, status, should_stop=self.runner.should_stop
        )
        self.status = status
        self.runner.spawn(self._run(job))
        log.info("refresh %s: %s → %s started", status.job, served, target)
        return status

    async def _run(self, job: RefreshJob) -> None:
        loop = asyncio.get_running_loop()

        def switch(job: RefreshJob, p: Prepared) -> None:  # in the job's thread
            job.status.phase = "catching_up"
            on_loop = self._catch_up_and_switch(job, p)
            asyncio.run_coroutine_threadsafe(on_loop, loop).result()

        reason = await self.runner.in_thread(job.attempt, switch)
        job.status.end(reason)  # then the runner is free, in the same step of the loop

    async def _catch_up_and_switch(self, job: RefreshJob, p: Prepared) -> None:
        """Bring the targets in line with the writes made while they were built, then switch
        with writes held off: no write answered 200 is lost."""
        for _ in range(self.settings.refresh.catch_up_passes):  # writes go on meanwhile
            if not await asyncio.to_thread(job.catch_up, p):
                break
        async with self.writes.closed():
            await asyncio.to_thread(job.catch_up, p)
            new = self._start(p.engine)
            try:
                await asyncio.to_thread(job.commit, p)
            except BaseException:
                await new.close()
                raise
            old = self._swap(new)  # before writes resume: they go to the served version
        self._spawn(old.retire(self.settings.refresh.drain_timeout_s))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def rollback(self) -> dict[str, Any]:
        """Serve the previous version again: its collections, engine and CURRENT.

        Raises:
            JobBusy: a refresh or rollback is running.
            VersionError: no previous version, or its collections were deleted.
        """
        name_dir, served = self.name_dir(), self.served
        self._claim()
        try:
            job = RefreshJob.rollback(self.q, self.settings, name_dir, served)
            p = await asyncio.to_thread(job.prepare_rollback)
            # The previous version's collections lack what was written since the refresh.
            await self._catch_up_and_switch(job, p)
        finally:
            self.runner.release()
        log.info("rolled back from %s to %s", served, p.version)
        return {"from_version": served, "to_version": p.version, "collections": p.targets}

    async def describe(self) -> dict[str, Any]:
        """Versions of the served model, CURRENT, and each version's collections."""
        return await asyncio.to_thread(refresh_job.describe, self.q, self.name_dir(), self.served)

    async def gc(self) -> dict[str, Any]:
        """Delete versions beyond DINOSERVE_REFRESH__KEEP_VERSIONS and their collections."""
        self._claim()
        try:
            return await asyncio.to_thread(
                refresh_job.gc,
                self.q,
                self.name_dir(),
                self.served,
                keep=self.settings.refresh.keep_versions,
                blob_store=Blobs(self.settings.blob_dir, self.settings.blob_fsync),
            )
        finally:
            self.runner.release()

    def start_watch(self) -> None:
        """With DINOSERVE_REFRESH__WATCH_INTERVAL_S > 0, refresh when CURRENT names another
        version (e.g. moved by an external job on a Qdrant server)."""
        interval = self.settings.refresh.watch_interval_s
        if interval > 0:
            self._watch = asyncio.create_task(self._watch_loop(interval))

    async def _watch_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                current = versions.current_or_none(self.name_dir())
                if current in (None, self.served) or self.runner.busy:
                    continue
                if current in self._watch_failed:
                    continue  # failed once: wait for a person (or a new CURRENT)
                log.info("CURRENT is %s: refreshing to it", current)
                self.start(current)
                if self.runner.task is not None:
                    await self.runner.task
                if self.status.state == "failed":
                    self._watch_failed.add(str(current))
            except (versions.VersionError, OSError, JobBusy) as exc:
                log.warning("registry watch: %s", exc)

    async def stop(self) -> None:
        """At shutdown: stop a running refresh between batches (it is aborted) and the watch."""
        self.runner.request_stop()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.runner.stop()
        for task in list(self._background):
            await task


class SingleProcessAdmin:
    """Refresh and rollback swap the engine inside one process: with worker processes they are
    refused (409) and the CLI does them (`dinoserve models …`, then restart)."""

    def __init__(self) -> None:
        self.status = RefreshStatus()

    def _refuse(self) -> JobsUnavailable:
        return JobsUnavailable(
            "model refresh and rollback run in a single-process service "
            "(DINOSERVE_SERVE__WORKERS=1); with worker processes, use the CLI and restart"
        )

    def start(self, version: str | None = None) -> RefreshStatus:
        raise self._refuse()

    async def rollback(self) -> dict[str, Any]:
        raise self._refuse()

    async def describe(self) -> dict[str, Any]:
        raise self._refuse()

    async def gc(self) -> dict[str, Any]:
        raise self._refuse()

    def start_watch(self) -> None:
        return None

    async def stop(self) -> None:
        return None
