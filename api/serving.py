"""What one model version needs to answer requests: its package card, engine and micro-batchers.

A request takes ONE `Serving` at its start (api.deps.ServingDep) and uses it throughout: the
query is embedded by that engine and searched in `<collection>__<its version>`. A refresh or a
rollback builds a new `Serving` and replaces the runtime's in one attribute assignment; the old
one finishes the requests that hold it, then closes its batchers (`retire`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import Executor

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.batcher import Batcher
from api.metrics import Metrics
from core.engines import Engine
from core.images import decode_each
from core.package import PackageMeta
from core.settings import Settings

log = logging.getLogger(__name__)


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
