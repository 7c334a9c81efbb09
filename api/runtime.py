"""The runtime objects of one app, built in its lifespan and closed at shutdown: the engine and
its worker thread, the micro-batchers, the Qdrant client and the metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.batcher import Batcher
from api.metrics import Metrics
from api.uploads import decode_all
from api.vectors import Vectors
from core import package, store
from core.engines import Engine, load_engine, preprocess_batch
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    meta: package.PackageMeta
    engine: Engine
    vectors: Vectors
    embedder: Batcher
    attender: Batcher
    metrics: Metrics

    async def decode(self, images: list[bytes]) -> tuple[list[Image.Image], np.ndarray]:
        """Decode (within DINOSERVE_MAX_PIXELS) and preprocess in a worker thread."""

        def work() -> tuple[list[Image.Image], np.ndarray]:
            pics = decode_all(images, self.settings.max_pixels)
            return pics, preprocess_batch(self.meta, pics)

        return await run_in_threadpool(work)

    async def embed(self, images: list[bytes]) -> np.ndarray:
        """L2-normalised embeddings (N, D) of encoded images, through the micro-batcher."""
        _, batch = await self.decode(images)
        return await self.embedder.submit(batch)


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[dict]:
    """Load the model, open Qdrant, start the batchers; undo it all at shutdown.

    Args:
        app: the application (unused; FastAPI's lifespan signature).
        settings: the service settings, validated.
        metrics: the app's metrics (model info and batch metrics are registered here).
    """
    package_dir = package.resolve(settings.models_dir, settings.model)
    engine = await run_in_threadpool(load_engine, package_dir, settings.engine, settings.inference)
    meta = package.read_meta(package_dir)
    q = settings.qdrant
    client = store.open_client(
        settings.qdrant_path, settings.qdrant_url, settings.qdrant_api_key, q.timeout_s
    )
    # One engine thread: engine calls run one at a time, each using the runtime's own intra-op
    # threads, instead of competing for the same cores.
    executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
    s = settings.serve
    batchers = {
        op: Batcher(fn, executor, s.max_batch, s.max_wait_ms, s.batching,
                    on_batch=metrics.batch_observer(op))
        for op, fn in (("embed", engine.embed), ("attention", engine.attention))
    }  # fmt: skip
    for op, b in batchers.items():
        b.start()
        metrics.watch_queue(op, lambda b=b: b.depth)
    metrics.model.info(
        {"name": meta.name, "version": meta.version, "engine": settings.engine,
         "embed_dim": str(meta.embed_dim)}
    )  # fmt: skip
    runtime = Runtime(
        settings, meta, engine, Vectors(client, engine.model_version, s.store_attempts),
        batchers["embed"], batchers["attention"], metrics,
    )  # fmt: skip
    log.info("serving %s %s (%s)", meta.name, meta.version, settings.engine)
    try:
        yield {"runtime": runtime}
    finally:
        for b in batchers.values():
            await b.close()
        executor.shutdown(wait=True)
        client.close()
