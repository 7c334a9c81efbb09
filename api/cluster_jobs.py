"""Cluster jobs inside the service (POST /collections/{name}/clusters): one at a time, the
k-means in a worker thread (the event loop never waits on it) with few BLAS threads, the
records on disk (core/cluster_results.py), so a result outlives the process and a job cut off
by a restart reads as "interrupted".

A request for what is cached (same physical collection, parameters, tuning, and the
collection's content unchanged) is answered from the cache without a job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from core.cluster_results import ClusterResults, as_seen, cache_key, new_record, run_job
from core.clusters import ClusterParams, Tuning, fingerprint

if TYPE_CHECKING:
    from api.runtime import Runtime

log = logging.getLogger(__name__)


class ClustersBusy(RuntimeError):
    """Another cluster job is running."""


class ClusterJobs:
    """The service's cluster jobs (see the module docstring)."""

    def __init__(self, rt: Runtime) -> None:
        d = rt.settings.discovery
        self.rt = rt
        self.results = ClusterResults(d.clusters_dir)
        self.tuning = Tuning(d.minibatch_above, d.k_sample, d.nearest, d.k_max)
        self.running: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    async def start(self, name: str, physical: str, params: ClusterParams) -> tuple[dict, bool]:
        """(record, cached): the cached done record for this request on the unchanged
        collection, the running job of the same request, or a new running job.

        Raises:
            ClustersBusy: a job for another request is running.
        """
        db = self.rt.store
        fp = await run_in_threadpool(lambda: fingerprint(db, physical))
        key = cache_key(physical, params, self.tuning, fp)
        done = await run_in_threadpool(lambda: self.results.cached(physical, key))
        if done is not None:
            return done, True
        if self.running is not None:
            if self.running["key"] == key:
                return self.running, False
            raise ClustersBusy(
                f"a cluster job is running (job {self.running['job']} on "
                f"{self.running['collection']}); retry when it is done"
            )
        record = new_record(name, physical, params, self.tuning, key)
        self.running = record
        self._task = asyncio.create_task(self._run(record))
        return record, False

    async def _run(self, record: dict[str, Any]) -> None:
        d = self.rt.settings.discovery
        try:
            await asyncio.to_thread(
                run_job,
                self.results,
                self.rt.store,
                record,
                d.cluster_threads,
                self._stop.is_set,
            )
            log.info(
                "cluster job %s on %s: %s", record["job"], record["collection"], record["state"]
            )
        except Exception:  # run_job saved it as failed; the service keeps serving
            log.exception("cluster job %s failed", record["job"])
        finally:
            self.running = None

    def get(self, name: str, job: str) -> dict[str, Any] | None:
        """A job's record as clients see it (blocking: reads the disk), or None."""
        if self.running is not None and self.running["job"] == job:
            return self.running if self.running["collection"] == name else None
        record = self.results.load(name, job)
        return None if record is None else as_seen(record, live=False)

    async def stop(self, wait_s: float = 10.0) -> None:
        """At shutdown: a running job stops at its next step (a page read, a k tried) and is
        saved as interrupted. One k-means fit cannot be cut short: shutdown waits `wait_s` for
        it, then goes on (the record says "running" on disk, so it reads as interrupted)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=wait_s)
