"""Refresh, rollback and gc inside the service, which owns the embedded Qdrant: one operation at
a time, the re-embedding in a worker thread, and nothing served changes until it is complete.

The order of a switch: start the new engine's batchers → flip every alias in one call → move
CURRENT → swap `Runtime.serving` (one assignment) → retire the old state once its requests end.
Requests search `<collection>__<their version>` directly, so they stay consistent between the
flip and the swap; the old collections stay until `models gc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.serving import Serving
from core import switchover, versions
from core.store import Store
from core.switchover import Prepared, RefreshStatus

if TYPE_CHECKING:
    from api.runtime import Runtime

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """A refresh or rollback is already running."""


class Refresher:
    """The service's admin operations on the served model (see api/routes/admin.py)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.status = RefreshStatus()
        self.busy = False  # set and cleared on the event loop only
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._watch_failed: set[str] = set()

    @property
    def q(self) -> Store:
        """The service's own store (the embedded one allows one process), batch retries."""
        return self.rt.store

    def name_dir(self) -> Path:
        s = self.rt.settings
        return versions.registry_dir(s.models_dir, s.model)

    def _claim(self) -> None:
        if self.busy:
            raise Busy(f"a refresh or rollback is running (job {self.status.job or '-'})")
        self.busy = True

    def start(self, version: str | None = None) -> RefreshStatus:
        """Begin a refresh to `version` (default: the newest version not served) and return.

        Raises:
            Busy: one is running.
            VersionError: unknown version, nothing to refresh to, or a pinned package path.
        """
        name_dir, served = self.name_dir(), self.rt.serving.version
        target = versions.refresh_target(name_dir, served, version)
        if target == served:
            raise versions.VersionError(f"{target} is already served")
        self._claim()
        self.status = RefreshStatus.begin(uuid.uuid4().hex[:12], served, target)
        self._task = asyncio.create_task(self._refresh(name_dir, served, target, self.status))
        log.info("refresh %s: %s → %s started", self.status.job, served, target)
        return self.status

    async def _refresh(self, name_dir: Path, served: str, target: str, st: RefreshStatus) -> None:
        created: list[str] = []
        try:
            p = await asyncio.to_thread(
                switchover.prepare,
                self.q,
                self.rt.settings,
                name_dir,
                served,
                target,
                st,
                created=created,
                should_stop=self._stop.is_set,
            )
            st.phase = "catching_up"
            await self._catch_up_and_switch(name_dir, p, created)
            st.end()
            log.info("refresh %s done: serving %s (%s)", st.job, target, st.collections)
        except Exception as exc:  # any failure: report it, keep serving the old version
            reason = f"{type(exc).__name__}: {exc}"
            log.error(
                "refresh %s to %s failed, still serving %s: %s", st.job, target, served, reason
            )
            try:
                await asyncio.to_thread(switchover.abort, self.q, created)
            except Exception:
                log.exception("refresh %s: could not drop %s", st.job, created)
            st.end(reason)
        finally:
            self.busy = False

    async def _catch_up_and_switch(self, name_dir: Path, p: Prepared, created: list[str]) -> None:
        """Bring the targets in line with the writes made while they were built, then switch
        with writes held off (api/writes.py): no write answered 200 is lost."""
        settings, stop = self.rt.settings, self._stop.is_set
        for _ in range(settings.refresh.catch_up_passes):  # writes go on meanwhile
            if not await asyncio.to_thread(switchover.catch_up, self.q, settings, p, created, stop):
                break
        async with self.rt.writes.closed():
            await asyncio.to_thread(switchover.catch_up, self.q, settings, p, created, stop)
            await self._switch(name_dir, p)

    async def _switch(self, name_dir: Path, p: Prepared) -> None:
        rt = self.rt
        new = Serving.start(p.engine, rt.executor, rt.settings, rt.metrics)
        try:
            await asyncio.to_thread(switchover.commit, self.q, name_dir, p)
        except BaseException:
            await new.close()
            raise
        old = rt.swap(new)
        self._spawn(old.retire(rt.settings.refresh.drain_timeout_s))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def rollback(self) -> dict[str, Any]:
        """Serve the previous version again: its collections, engine and CURRENT.

        Raises:
            Busy: a refresh or rollback is running.
            VersionError: no previous version, or its collections were deleted.
        """
        name_dir, served = self.name_dir(), self.rt.serving.version
        self._claim()
        try:
            p = await asyncio.to_thread(
                switchover.prepare_rollback, self.q, self.rt.settings, name_dir, served
            )
            # The previous version's collections lack what was written since the refresh.
            await self._catch_up_and_switch(name_dir, p, [])
        finally:
            self.busy = False
        log.info("rolled back from %s to %s", served, p.version)
        return {"from_version": served, "to_version": p.version, "collections": p.targets}

    async def describe(self) -> dict[str, Any]:
        """Versions of the served model, CURRENT, and each version's collections."""
        return await asyncio.to_thread(
            versions.describe, self.q, self.name_dir(), self.rt.serving.version
        )

    async def gc(self) -> dict[str, Any]:
        """Delete versions beyond DINOSERVE_REFRESH__KEEP_VERSIONS and their collections."""
        self._claim()
        try:
            return await asyncio.to_thread(
                versions.gc,
                self.q,
                self.name_dir(),
                self.rt.serving.version,
                keep=self.rt.settings.refresh.keep_versions,
                blob_store=self.rt.blobs,
            )
        finally:
            self.busy = False

    def start_watch(self) -> None:
        """With DINOSERVE_REFRESH__WATCH_INTERVAL_S > 0, refresh when CURRENT names another
        version (e.g. moved by an external job on a Qdrant server)."""
        interval = self.rt.settings.refresh.watch_interval_s
        if interval > 0:
            self._watch = asyncio.create_task(self._watch_loop(interval))

    async def _watch_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                current = versions.current_or_none(self.name_dir())
                if current in (None, self.rt.serving.version) or self.busy:
                    continue
                if current in self._watch_failed:
                    continue  # failed once: wait for a person (or a new CURRENT)
                log.info("CURRENT is %s: refreshing to it", current)
                self.start(current)
                if self._task is not None:
                    await self._task
                if self.status.state == "failed":
                    self._watch_failed.add(str(current))
            except (versions.VersionError, OSError, Busy) as exc:
                log.warning("registry watch: %s", exc)

    async def stop(self) -> None:
        """At shutdown: stop a running refresh between batches (it is aborted) and the watch."""
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._task is not None:
            await self._task
        for task in list(self._background):
            await task
