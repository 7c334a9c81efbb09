"""An HTTP worker of `DINOSERVE_SERVE__WORKERS=N`: the same app, whose engine (and, with the
embedded store, whose Qdrant) lives in the engine process (api/engine_server.py).

The worker decodes and preprocesses uploads itself (that is the CPU work a single process runs
out of), batches its own concurrent requests as usual, and sends each batch to the engine
process, whose batcher merges the batches of all workers into the engine's.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from api.engine_wire import EngineUnavailable, WireError, call, encode_rows
from api.index_jobs import NoIndexJobs
from api.metrics import Metrics
from api.refresh import SingleProcessAdmin
from api.runtime import Runtime, model_info
from api.serving import Serving
from api.vectors import Vectors
from core import package, store
from core.engines import PackagedModel
from core.images import ImageRejected
from core.settings import Settings


class EngineLink:
    """Blocking request/reply to the engine process, one connection per calling thread.

    Raises (from `request`):
        EngineUnavailable: the engine process cannot be reached; else whatever the engine
            side raised.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def _sock(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(self.path))
            self._local.sock = sock
            with self._lock:
                self._socks.append(sock)
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            sock.close()

    def request(self, op: str, arg: object = None) -> Any:
        try:
            kind, value = call(self._sock(), (op, arg))  # type: ignore[misc]
        except (OSError, WireError) as exc:
            self._drop()  # a reply may be half read: never reuse this connection
            raise EngineUnavailable(f"the engine process is not reachable: {exc}") from exc
        if kind == "ok":
            return value
        if kind == "image_rejected":
            raise ImageRejected(*value)
        raise value

    def close(self) -> None:
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()


class RemoteEngine(PackagedModel):
    """The Engine protocol over an EngineLink: preprocessing here, embed and attention in the
    engine process."""

    def __init__(self, link: EngineLink, meta: package.PackageMeta) -> None:
        self.link, self.meta = link, meta

    def _rows(self, batch: np.ndarray) -> tuple:
        return encode_rows(batch, self.meta.mean, self.meta.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.link.request("embed", self._rows(batch))

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return self.link.request("attention", self._rows(batch))


class RemoteServing(Serving):
    """Serving whose `embed` sends the encoded images to the engine process when it decodes
    them itself (serve.device_decode): no decoding here, and one batcher, the engine's, merges
    the requests of every worker. Otherwise, and for attention maps, as Serving."""

    link: EngineLink | None = None

    async def embed(self, images: list[bytes]) -> np.ndarray:
        if self.link is None:
            return await super().embed(images)
        return await run_in_threadpool(self.link.request, "embed_encoded", images)


class RemoteVectors:
    """api.vectors.Vectors of the engine process: every public async method is forwarded."""

    def __init__(self, link: EngineLink) -> None:
        self.link = link

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await run_in_threadpool(self.link.request, "vectors", (name, args, kwargs))

        return method


@asynccontextmanager
async def worker_lifespan(settings: Settings, metrics: Metrics) -> AsyncIterator[dict]:
    """The runtime of one HTTP worker: a remote engine behind the usual Serving and batchers."""
    assert settings.serve.engine_socket is not None
    link = EngineLink(Path(settings.serve.engine_socket))
    info = await run_in_threadpool(link.request, "meta")
    meta = package.read_meta(Path(info["package_dir"]))
    engine = RemoteEngine(link, meta)
    engine.runtime, engine.variant = info.get("engine", ""), info.get("variant", "fp32")
    executor = ThreadPoolExecutor(1, thread_name_prefix="engine-link")
    serving = RemoteServing.start(engine, executor, settings, metrics)
    if info["device_decode"]:
        serving.link = link
    db = None
    if info["store"]:
        vectors: Any = RemoteVectors(link)
    else:
        db = store.open_store(settings, store.request_policy(settings))
        vectors = Vectors(db)
    metrics.model.info(model_info(serving, settings.engine))
    runtime = Runtime(
        settings,
        serving,
        vectors,
        metrics,
        executor,
        admin=SingleProcessAdmin(),
        indexing=NoIndexJobs(),
    )
    metrics.watch_queue("embed", lambda: runtime.serving.embedder.depth)
    metrics.watch_queue("attention", lambda: runtime.serving.attender.depth)
    try:
        yield {"runtime": runtime}
    finally:
        await serving.close()
        executor.shutdown(wait=True)
        link.close()
        if db is not None:
            db.close()
