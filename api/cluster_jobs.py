"""Cluster jobs inside the service (POST /collections/{name}/clusters): one at a time, the
k-means in a worker thread (the event loop never waits on it) with few BLAS threads, the
records on disk (discovery/results.py), so a result outlives the process and a job cut off
by a restart reads as "interrupted".

A request for what is cached (same physical collection, parameters, tuning, and the
collection's content unchanged) is answered from the cache without a job.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.jobs import JobRunner
from core.settings import DiscoverySettings
from core.store import Store
from discovery.clusters import ClusterParams, Tuning, fingerprint
from discovery.results import ClusterResults, as_seen, cache_key, new_record, run_job

log = logging.getLogger(__name__)


class ClusterJobs:
    """The service's cluster jobs (see the module docstring).

    Args:
        settings: DINOSERVE_DISCOVERY__*.
        store: the service's store, with the batch retry policy.
    """

    def __init__(self, settings: DiscoverySettings, store: Store) -> None:
        d = self.settings = settings
        self.store = store
        self.results = ClusterResults(d.clusters_dir)
        self.tuning = Tuning.of(d)
        self.running: dict[str, Any] | None = None
        self.runner = JobRunner("clusters")

    async def start(self, name: str, physical: str, params: ClusterParams) -> tuple[dict, bool]:
        """(record, cached): the cached done record for this request on the unchanged
        collection, the running job of the same request, or a new running job.

        Raises:
            JobBusy: a job for another request is running.
        """
        db = self.store
        fp = await run_in_threadpool(lambda: fingerprint(db, physical))
        key = cache_key(physical, params, self.tuning, fp)
        done = await run_in_threadpool(lambda: self.results.cached(physical, key))
        if done is not None:
            return done, True
        if self.running is not None:
            if self.running["key"] == key:
                return self.running, False
            self.runner.claim(
                f"a cluster job is running (job {self.running['job']} on "
                f"{self.running['collection']}); retry when it is done"
            )
        record = new_record(name, physical, params, self.tuning, key)
        self.runner.claim("")
        self.running = record
        self.runner.spawn(self._run(record))
        return record, False

    async def _run(self, record: dict[str, Any]) -> None:
        try:
            final = await self.runner.in_thread(
                run_job,
                self.results,
                self.store,
                record,
                self.settings.cluster_threads,
                self.runner.should_stop,
            )
            log.info(
                "cluster job %s on %s: %s", record["job"], record["collection"], final["state"]
            )
        except Exception:  # run_job saved it as failed; the service keeps serving
            log.exception("cluster job %s failed", record["job"])
        finally:
            # The end is published here, on the event loop, after run_job saved and cached
            # it: from now on `get` reads the saved record, and a request seen "done" is
            # answered from the cache (200), never by this finished job (202) or as busy.
            self.running = None

    def get(self, name: str, job: str) -> dict[str, Any] | None:
        """A job's record as clients see it (blocking: reads the disk), or None."""
        running = self.running  # read once: the event loop may clear it meanwhile
        if running is not None and running["job"] == job:
            return running if running["collection"] == name else None
        record = self.results.load(name, job)
        return None if record is None else as_seen(record, live=False)

    async def stop(self, wait_s: float = 10.0) -> None:
        """At shutdown: a running job stops at its next step (a page read, a k tried) and is
        saved as interrupted. One k-means fit cannot be cut short: shutdown waits `wait_s` for
        it, then goes on (the record says "running" on disk, so it reads as interrupted)."""
        await self.runner.stop(wait_s)
