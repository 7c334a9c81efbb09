"""`dinoserve index` inside the service: the service owns the embedded store (one process may
open it), so the CLI hands it the job through POST /admin/index and follows GET /admin/index.

One job at a time, in a worker thread, with the service's store and its served model; engine
calls go through the service's one engine thread, so requests and indexing take turns instead
of competing for the cores. The report is the CLI's: the same counts, summary and failures file.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

from api.jobs import JobRunner, JobsUnavailable
from core.engines import Engine
from core.settings import Settings
from core.store import Store
from indexer.pipeline import IndexReport, Stopped
from indexer.run import IndexRequest, list_items, run_index
from indexer.sources import SourceError

log = logging.getLogger(__name__)


class NoIndexJobs:
    """The indexing jobs of an HTTP worker process (DINOSERVE_SERVE__WORKERS > 1): the engine
    process owns the embedded store, so jobs are refused with what to do instead."""

    status = None

    def start(self, req: IndexRequest) -> IndexStatus:
        raise JobsUnavailable(
            "indexing jobs run in a single-process service (DINOSERVE_SERVE__WORKERS=1); with "
            "worker processes, stop the service to index into the embedded store, or use a "
            "Qdrant server (DINOSERVE_QDRANT_URL), which every process can write"
        )

    async def stop(self) -> None:
        return None


@dataclass
class IndexStatus:
    job: str = ""
    state: str = "idle"  # idle | running | done | failed
    request: dict[str, Any] = field(default_factory=dict)
    collection: str | None = None
    physical: str | None = None
    total: int = 0
    done: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0
    seconds: float = 0.0
    stage: str | None = None  # "embedding", "building index", "done"
    building_s: float = 0.0
    summary: str | None = None
    failures_path: str | None = None
    error: str | None = None

    def update(self, r: IndexReport, done: int) -> None:
        self.collection, self.physical, self.total = r.collection, r.physical, r.total
        self.done, self.indexed, self.unchanged = done, r.indexed, r.unchanged
        self.failed, self.pruned = r.failed, r.pruned
        self.stage, self.building_s = r.stage, r.building_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IndexJobs:
    """The service's indexing jobs (see the module docstring).

    Args:
        settings: the service settings.
        store: the service's store, with the batch retry policy.
        engine: the engine served now (read when a job starts).
        executor: the service's one engine thread (jobs take turns with requests on it).
    """

    def __init__(
        self, settings: Settings, store: Store, engine: Callable[[], Engine], executor: Executor
    ) -> None:
        self.settings, self.store, self.engine, self.executor = settings, store, engine, executor
        self.status = IndexStatus()
        self.runner = JobRunner("index")

    def start(self, req: IndexRequest) -> IndexStatus:
        """Check the request (the source must list) and start.

        Raises:
            JobBusy: a job is running.
            SourceError: the source does not list.
        """
        self.runner.claim(f"an indexing job is running (job {self.status.job})")
        try:
            items = list_items(req)
        except ValueError as exc:  # a bad name or path: the source is refused (422) either way
            self.runner.release()
            if isinstance(exc, SourceError):
                raise
            raise SourceError(str(exc)) from exc
        except BaseException:
            self.runner.release()
            raise
        self.status = IndexStatus(uuid.uuid4().hex[:12], "running", req.as_dict())
        self.runner.spawn(self._run(req, items, self.status))
        return self.status

    async def _run(self, req: IndexRequest, items: list, st: IndexStatus) -> None:
        t0 = time.perf_counter()
        try:
            report = await self.runner.in_thread(
                run_index,
                self.settings,
                self.store,
                self.engine(),  # the version served when the job starts
                req,
                progress=False,
                on_batch=st.update,
                should_stop=self.runner.should_stop,
                items=items,
                executor=self.executor,  # take turns with requests on the engine thread
            )
            st.update(report, report.total)
            st.summary, st.failures_path = report.summary(), report.failures_path
            st.state = "done"
            log.info("index job %s: %s", st.job, st.summary)
        except (Stopped, Exception) as exc:  # reported to the CLI; the service keeps serving
            st.state, st.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("index job %s failed: %s", st.job, st.error)
        finally:
            st.seconds = time.perf_counter() - t0

    async def stop(self) -> None:
        """At shutdown: stop a running job between batches (what is written stays)."""
        await self.runner.stop()
