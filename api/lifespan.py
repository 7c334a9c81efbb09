"""The lifespan of one app: load the engine, open the store, build the `Runtime` (its serving
state, jobs and admin), and undo it all at shutdown. An HTTP worker of
DINOSERVE_SERVE__WORKERS > 1 builds its runtime on the engine process instead
(api/engine_client.py)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.cluster_jobs import ClusterJobs
from api.engine_client import worker_lifespan
from api.index_jobs import IndexJobs
from api.metrics import Metrics
from api.refresh import Refresher
from api.runtime import Runtime, model_info
from api.serving import Serving
from api.vectors import Vectors
from core import package, store
from core.engine_choice import load_engine
from core.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[dict]:
    """Load the model, open Qdrant, start the batchers; undo it all at shutdown.

    Args:
        app: the application (unused; FastAPI's lifespan signature).
        settings: the service settings, validated.
        metrics: the app's metrics (model info and batch metrics are registered here).
    """
    if settings.serve.engine_socket:  # an HTTP worker of DINOSERVE_SERVE__WORKERS > 1
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
    metrics.model.info(model_info(serving, settings.engine))
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
    runtime.indexing = IndexJobs(
        settings, runtime.store, lambda: runtime.serving.engine, runtime.executor
    )
    runtime.clusters = ClusterJobs(settings.discovery, runtime.store)
    runtime.admin.start_watch()
    run = serving.engine_info(settings.engine)
    log.info("serving %s %s (%s %s)", meta.name, meta.version, run["engine"], run["engine_variant"])
    try:
        yield {"runtime": runtime}
    finally:
        await runtime.clusters.stop()
        await runtime.indexing.stop()
        await runtime.admin.stop()
        await runtime.serving.close()
        executor.shutdown(wait=True)
        db.close()
