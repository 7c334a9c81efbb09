"""The runtime objects of one app, built in its lifespan and closed at shutdown: the engine and
its worker thread, the micro-batchers, the Qdrant client and the metrics."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.cluster_jobs import ClusterJobs
from api.index_jobs import IndexJobs
from api.metrics import Metrics
from api.refresh import Refresher, SingleProcessAdmin
from api.serving import Serving
from api.vectors import Vectors
from api.writes import WriteGate
from core import package, store
from core.blobs import Blobs
from core.engines import load_engine
from core.samples import Samples
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """`serving` (model card, engine, batchers) is replaced as a whole by a refresh or rollback;
    a request reads it once (api.deps.ServingDep); `meta` is for probes that need no more."""

    settings: Settings
    serving: Serving
    vectors: Vectors
    metrics: Metrics
    executor: ThreadPoolExecutor
    admin: Refresher | SingleProcessAdmin | None = None  # set in the lifespan
    indexing: IndexJobs | None = None
    clusters: ClusterJobs | None = None  # None: not in HTTP worker processes
    writes: WriteGate = dataclasses.field(default_factory=WriteGate)  # collection writes

    @property
    def blobs(self) -> Blobs:
        """Uploaded images (DINOSERVE_BLOB_DIR, at most DINOSERVE_BLOB_MAX_BYTES)."""
        s = self.settings
        return Blobs(s.blob_dir, s.blob_fsync, s.blob_max_bytes)

    @functools.cached_property
    def samples(self) -> Samples:
        """The page's example images (DINOSERVE_SAMPLES_DIR), listed once."""
        return Samples(self.settings.samples_dir)

    @property
    def store(self) -> store.Store:
        """The store with the batch retry policy (refresh, indexing jobs)."""
        return self.vectors.db.with_policy(store.BATCH)

    @property
    def meta(self) -> package.PackageMeta:
        return self.serving.meta

    def swap(self, new: Serving) -> Serving:
        """Serve `new` from the next request on; returns the old state (to retire)."""
        old, self.serving = self.serving, new
        self.metrics.model.info(_model_info(new.meta, self.settings.engine))
        log.info("now serving %s %s", new.meta.name, new.meta.version)
        return old


def _model_info(meta: package.PackageMeta, engine: str) -> dict[str, str]:
    return {
        "name": meta.name,
        "version": meta.version,
        "engine": engine,
        "embed_dim": str(meta.embed_dim),
    }


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[dict]:
    """Load the model, open Qdrant, start the batchers; undo it all at shutdown.

    Args:
        app: the application (unused; FastAPI's lifespan signature).
        settings: the service settings, validated.
        metrics: the app's metrics (model info and batch metrics are registered here).
    """
    if settings.serve.engine_socket:  # an HTTP worker of DINOSERVE_SERVE__WORKERS > 1
        from api.engine_client import worker_lifespan

        async with worker_lifespan(settings, metrics) as state:
            yield state
        return
    package_dir = package.resolve(settings.models_dir, settings.model)
    engine = await run_in_threadpool(load_engine, package_dir, settings.engine, settings.inference)
    meta = engine.meta
    # Request handlers retry quickly and answer 503 (store.REQUEST); the refresh worker uses
    # the same store with the batch policy (Runtime.store).
    db = store.open_store(settings, store.request_policy(settings))
    # One engine thread: engine calls run one at a time, each using the runtime's own intra-op
    # threads, instead of competing for the same cores.
    # Old and new engines of a refresh share it too.
    executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
    serving = Serving.start(engine, executor, settings, metrics)
    metrics.model.info(_model_info(meta, settings.engine))
    runtime = Runtime(settings, serving, Vectors(db), metrics, executor)
    metrics.watch_queue("embed", lambda: runtime.serving.embedder.depth)
    metrics.watch_queue("attention", lambda: runtime.serving.attender.depth)
    runtime.admin = Refresher(
        runtime.store,
        settings,
        runtime.writes,
        serving=lambda: runtime.serving,
        start=functools.partial(
            Serving.start, executor=executor, settings=settings, metrics=metrics
        ),
        swap=runtime.swap,
    )
    runtime.indexing = IndexJobs(runtime)
    runtime.clusters = ClusterJobs(runtime)
    runtime.admin.start_watch()
    log.info("serving %s %s (%s)", meta.name, meta.version, settings.engine)
    try:
        yield {"runtime": runtime}
    finally:
        await runtime.clusters.stop()
        await runtime.indexing.stop()
        await runtime.admin.stop()
        await runtime.serving.close()
        executor.shutdown(wait=True)
        db.close()
