"""What one model version needs to answer requests: its package card, engine and micro-batchers.

A request takes ONE `Serving` at its start (api.deps.ServingDep) and uses it throughout: the
query is embedded by that engine and searched in `<collection>__<its version>`. A refresh or a
rollback builds a new `Serving` and replaces the runtime's in one attribute assignment; the old
one finishes the requests that hold it, then closes its batchers (`retire`).

Micro-batching (`Batcher`, here because only the serving object and the engine server of worker
processes use it): requests that arrive together share one engine call, run off the event loop.
Each request submits its rows (e.g. preprocessed images, (n, 3, H, W)); a collector task takes
the first waiting job, then gathers more until `max_batch` rows are queued or `max_wait_ms` has
passed, concatenates them, runs the function in a worker thread and hands every caller its own
slice. While one batch runs the next one fills up, so under load batches grow on their own even
with no wait at all (max_wait_ms=0, the default); a wait only helps where a bigger batch is
nearly free (a GPU). With `enabled=False` every request runs alone (batch-1 serving, the
benchmark's baseline), through the same queue and thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.metrics import Metrics
from core.engines import Engine
from core.images import decode_each
from core.package import PackageMeta
from core.settings import Settings

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher is shutting down (or was never started) and takes no new work."""


@dataclass
class _Job:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Coalesces concurrent calls of a batched function `fn: (N, ...) → (N, ...)`.

    Args:
        fn: the batched function (e.g. `engine.embed`); called in `executor`, one batch at a time.
        executor: where `fn` runs (a one-thread pool keeps engine calls serial).
        max_batch: most rows per call of `fn`; a larger request is split into chunks.
        max_wait_ms: how long the first job of a batch waits for others.
        enabled: False = no coalescing: each request is its own batch.
        on_batch: called with the size of every batch `fn` runs (metrics).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be ≥ 1")
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.enabled = enabled
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: _Job | None = None  # a job that did not fit the previous batch
        self._queued_rows = 0
        self._closed = False

    @property
    def depth(self) -> int:
        """Rows waiting for a batch (not counting the batch running now)."""
        return self._queued_rows

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, finish what is queued, then stop the collector."""
        if self._closed or self._queue is None or self._task is None:
            self._closed = True
            return
        self._closed = True
        self._queue.put_nowait(None)  # behind every queued job: they are all served first
        await self._task

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run `fn` on `rows` as part of some batch; returns this request's rows of the result.

        Raises:
            BatcherClosed: not started or shutting down.
            Exception: whatever `fn` raised for these rows.
        """
        if self._closed or self._queue is None:
            raise BatcherClosed("the service is shutting down")
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(rows[i : i + self.max_batch], loop.create_future())
            for i in range(0, len(rows), self.max_batch)
        ]
        for job in jobs:
            self._queued_rows += len(job.rows)
            self._queue.put_nowait(job)
        try:
            parts = await asyncio.gather(*(j.future for j in jobs))
        except asyncio.CancelledError:  # the client went away: do not compute for nobody
            for j in jobs:
                j.future.cancel()
            raise
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _next(self, timeout: float | None) -> _Job | None:
        """The carried-over job, else the next queued one; None is the shutdown marker.

        Raises:
            TimeoutError: nothing came within `timeout` seconds.
        """
        assert self._queue is not None
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            if self._queue.empty():
                raise TimeoutError
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            if first is None:
                return
            jobs, size, stop = [first], len(first.rows), False
            deadline = loop.time() + self.max_wait
            while self.enabled and size < self.max_batch:
                try:
                    job = await self._next(deadline - loop.time())
                except TimeoutError:
                    break
                if job is None:
                    stop = True  # run what we have, then stop
                    break
                if size + len(job.rows) > self.max_batch:
                    self._carry = job  # it starts the next batch
                    break
                jobs.append(job)
                size += len(job.rows)
            self._queued_rows -= size
            await self._run([j for j in jobs if not j.future.done()])
            if stop:
                return

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        batch = jobs[0].rows if len(jobs) == 1 else np.concatenate([j.rows for j in jobs])
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            out = await loop.run_in_executor(self.executor, self.fn, batch)
        except Exception as exc:
            if len(jobs) == 1:
                _settle(jobs[0], exc=exc)
                return
            # One bad request must not fail its neighbours: run each job alone to find out
            # whose rows the error belongs to.
            log.warning("a batch of %d jobs failed (%s); retrying them one by one", len(jobs), exc)
            for job in jobs:
                await self._run([job])
            return
        start = 0
        for job in jobs:
            _settle(job, out[start : start + len(job.rows)])
            start += len(job.rows)


def _settle(job: _Job, result: np.ndarray | None = None, exc: Exception | None = None) -> None:
    if job.future.done():  # cancelled by its caller meanwhile
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)


class Serving:
    """One served model version; its fields are never reassigned after `start`.

    Args:
        engine: the loaded engine, with its package's model.json (`engine.meta`).
        embedder, attender: started micro-batchers over `engine.embed` / `engine.attention`.
        max_pixels: the decoding limit (DINOSERVE_MAX_PIXELS).
    """

    def __init__(
        self, engine: Engine, embedder: Batcher, attender: Batcher, max_pixels: int
    ) -> None:
        self.meta: PackageMeta = engine.meta
        self.engine, self.max_pixels = engine, max_pixels
        self.embedder, self.attender = embedder, attender
        self.users = 0  # requests holding this state (changed on the event loop only)
        self.decode_slots = asyncio.Semaphore(max(2, os.cpu_count() or 1))

    @classmethod
    def start(
        cls,
        engine: Engine,
        executor: Executor,
        settings: Settings,
        metrics: Metrics,
    ) -> Serving:
        """Build and start the batchers (on the running event loop)."""
        s = settings.serve
        embedder, attender = (
            Batcher(
                fn,
                executor,
                s.max_batch,
                s.max_wait_ms,
                s.batching,
                on_batch=metrics.batch_observer(op),
            )
            for op, fn in (("embed", engine.embed), ("attention", engine.attention))
        )
        embedder.start()
        attender.start()
        return cls(engine, embedder, attender, settings.max_pixels)

    @property
    def version(self) -> str:
        return self.meta.version

    def engine_info(self, setting: str) -> dict[str, str]:
        """What runs this version: `engine` and `engine_variant` as resolved (with
        DINOSERVE_ENGINE=auto, the choice of the bench record, or fp32 without one), and
        `engine_setting`, the DINOSERVE_ENGINE that chose them."""
        return {
            "engine": getattr(self.engine, "runtime", "") or setting,
            "engine_variant": getattr(self.engine, "variant", "fp32"),
            "engine_setting": setting,
        }

    async def decode(
        self, images: list[bytes], keep: bool = True
    ) -> tuple[list[Image.Image], np.ndarray]:
        """Decode (within DINOSERVE_MAX_PIXELS) and preprocess for this model, in a thread.

        Args:
            images: encoded images.
            keep: return the decoded images too (else an empty list: each full-size image is
                dropped as soon as its crop is made).
        """

        def work() -> tuple[list[Image.Image], np.ndarray]:
            pics, crops = [], []
            for img in decode_each(images, self.max_pixels):
                crops.append(self.engine.preprocess(img))
                if keep:
                    pics.append(img)
            return pics, np.stack(crops)

        # At most `decode_slots` decodes at once: decoding is CPU-bound, more would not be
        # faster, and each holds a full-size image (up to DINOSERVE_MAX_PIXELS × 3 bytes).
        async with self.decode_slots:
            return await run_in_threadpool(work)

    async def embed(self, images: list[bytes]) -> np.ndarray:
        """L2-normalised embeddings (N, D) of encoded images, through the micro-batcher."""
        _, batch = await self.decode(images, keep=False)
        return await self.embedder.submit(batch)

    async def close(self) -> None:
        await self.embedder.close()
        await self.attender.close()

    async def retire(self, timeout_s: float) -> None:
        """Close the batchers once no request holds this state (or after `timeout_s`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.users > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.users:
            log.warning("closing model %s with %d requests in flight", self.version, self.users)
        await self.close()
        log.info("retired model version %s", self.version)
