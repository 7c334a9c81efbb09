"""The engine process of `DINOSERVE_SERVE__WORKERS=N`: one process owns the model (GPU or CPU),
the micro-batchers and the embedded Qdrant store, and serves the N HTTP worker processes over a
Unix socket (api/engine_wire.py). Single-image requests from every worker meet in one batcher,
so many HTTP processes fill one engine's batches, and there is one copy of the model.

Requests on the socket: ("meta", None) → the package directory, version and whether uploads are
decoded here; ("embed_encoded", [bytes, …]) → embeddings of encoded images, decoded and
preprocessed in batches on the engine's device (serve.device_decode); ("embed" or
"attention", rows) → the batcher's result for those rows (sent as the uint8 pixels they were
normalised from where that is exact: api.engine_wire.encode_rows); ("vectors", (method, args,
kwargs)) → `await Vectors.<method>(*args, **kwargs)` on the embedded store (only the engine
process may open it: it admits one process). Replies: ("ok", value),
("image_rejected", (reason, message)) or ("err", exc).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from api.engine_wire import WireError, call, decode_rows, pack, portable, read_frame
from api.serving import Batcher
from api.vectors import Vectors
from core import package, store
from core.device_images import preprocess_encoded, use_device_decode
from core.engine_choice import load_engine
from core.images import ImageRejected
from core.settings import Settings

log = logging.getLogger(__name__)
SOCKET_NAME = "engine.sock"


class EngineServer:
    """The objects of the engine process and the handler of its connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.package_dir = package.resolve(settings.models_dir, settings.model)
        self.engine = load_engine(self.package_dir, settings.engine, settings.inference)
        self.meta = self.engine.meta
        self.device_decode = settings.serve.device_decode != "cpu" and use_device_decode(
            settings.serve.device_decode, self.engine
        )
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.vectors: Vectors | None = None
        if not settings.qdrant_url:  # a server admits every worker itself
            self.vectors = Vectors(store.open_store(settings, store.request_policy(settings)))

    def start(self) -> None:
        s = self.settings.serve
        self.embedder, self.attender, self.encoded = (
            Batcher(fn, self.executor, s.max_batch, s.max_wait_ms, s.batching)
            for fn in (self.engine.embed, self.engine.attention, self.embed_encoded)
        )
        for batcher in (self.embedder, self.attender, self.encoded):
            batcher.start()

    async def close(self) -> None:
        for batcher in (self.embedder, self.attender, self.encoded):
            await batcher.close()
        self.executor.shutdown(wait=True)
        if self.vectors is not None:
            self.vectors.db.close()

    def embed_encoded(self, jobs: np.ndarray) -> np.ndarray:
        """Encoded images (an object array of bytes) → L2-normalised embeddings: decoded and
        preprocessed on the engine's device in one batch (core/device_images.py).

        Raises:
            ImageRejected: the first image that is not one (the batcher then retries each
                request alone, so the error reaches only the request that sent it).
        """
        import torch

        m, datas = self.meta, list(jobs)
        device = getattr(self.engine, "device", torch.device("cpu"))
        out = preprocess_encoded(
            datas,
            m.img_size,
            m.mean,
            m.std,
            m.crop_pct,
            device,
            self.settings.max_pixels,
            tensor_decode=True,
        )
        if out.rejected:
            i, exc = min(out.rejected.items())
            if len(datas) == 1:
                raise exc
            raise ImageRejected(exc.reason, f"image {i}: {exc}")
        embed_tensor = getattr(self.engine, "embed_tensor", None)
        if embed_tensor is not None:
            return embed_tensor(out.images).float().cpu().numpy()
        return self.engine.embed(out.images.cpu().numpy())

    async def answer(self, op: str, arg: object) -> object:
        if op == "meta":
            return {
                "package_dir": str(self.package_dir),
                "version": self.engine.model_version,
                "store": self.vectors is not None,
                "device_decode": self.device_decode,
                "engine": getattr(self.engine, "runtime", ""),  # as resolved (auto → its choice)
                "variant": getattr(self.engine, "variant", "fp32"),
            }
        if op == "embed_encoded":
            jobs = np.empty(len(arg), dtype=object)  # type: ignore[arg-type]
            jobs[:] = arg
            return await self.encoded.submit(jobs)
        if op in ("embed", "attention"):
            rows = decode_rows(arg, self.meta.mean, self.meta.std)  # type: ignore[arg-type]
            return await (self.embedder if op == "embed" else self.attender).submit(rows)
        if op == "vectors" and self.vectors is not None:
            name, args, kwargs = arg  # type: ignore[misc]
            if name.startswith("_"):
                raise ValueError(f"not a Vectors method: {name}")
            return await getattr(self.vectors, name)(*args, **kwargs)
        raise ValueError(f"unknown request {op!r}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker connection: requests answered one at a time, in order."""
        try:
            while True:
                try:
                    op, arg = await read_frame(reader)  # type: ignore[misc]
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    reply: tuple = ("ok", await self.answer(op, arg))
                except ImageRejected as exc:
                    reply = ("image_rejected", (exc.reason, str(exc)))
                except Exception as exc:
                    reply = ("err", portable(exc))
                writer.write(pack(reply))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


async def _serve(settings: Settings, path: Path) -> None:
    loop = asyncio.get_running_loop()
    server = EngineServer(settings)
    server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def orphan_watch() -> None:  # the serving process died without stopping us
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    watch = loop.create_task(orphan_watch())
    unix = await asyncio.start_unix_server(server.handle, path=str(path))
    log.info("engine process %d serving %s on %s", os.getpid(), server.engine.model_version, path)
    await stop.wait()
    watch.cancel()
    unix.close()
    await server.close()


def engine_main(settings: Settings, path: str) -> None:
    """Entry point of the engine process (multiprocessing, spawn)."""
    logging.basicConfig(level=logging.INFO, format="engine %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(settings, Path(path)))


def start_engine_process(
    settings: Settings, timeout_s: float = 900.0
) -> tuple[multiprocessing.process.BaseProcess, Path]:
    """Start the engine process and wait until it answers; returns it and its socket path.

    The wait is long by default: a compiled CUDA engine compiles every bucket before it answers.

    Raises:
        RuntimeError: it exited or did not answer within `timeout_s`.
    """
    folder = Path(tempfile.mkdtemp(prefix="dinoserve-engine-"))  # 0700: ours alone
    path = folder / SOCKET_NAME
    # spawn, not fork: CUDA cannot be used in a forked child, and the parent's threads (uvicorn,
    # thread pools) must not be copied in a half state.
    proc = multiprocessing.get_context("spawn").Process(
        target=engine_main, args=(settings, str(path)), name="dinoserve-engine"
    )  # not a daemon: it may start processes of its own (torch.compile's workers); it stops
    # when the serving process stops it, or by itself when that process is gone (orphan_watch)
    proc.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"the engine process exited with code {proc.exitcode}")
        if path.exists():
            with contextlib.suppress(OSError, WireError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                if call(sock, ("meta", None))[0] == "ok":  # type: ignore[index]
                    return proc, path
        time.sleep(0.2)
    stop_engine_process(proc, path)
    raise RuntimeError(f"the engine process did not answer within {timeout_s:.0f} s")


def stop_engine_process(proc: multiprocessing.process.BaseProcess, path: Path) -> None:
    """SIGTERM (finish queued batches), then kill after 30 s; remove the socket's folder."""
    if proc.is_alive():
        proc.terminate()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    with contextlib.suppress(OSError):
        path.unlink()
        path.parent.rmdir()


def serve_with_workers(settings: Settings, options: dict) -> None:
    """`dinoserve serve` with `serve.workers` HTTP processes around one engine process.

    The workers are uvicorn's (spawned, each building the app from the same DINOSERVE_*
    environment); they find the engine through DINOSERVE_SERVE__ENGINE_SOCKET.

    Args:
        settings: the validated settings (serve.workers > 1).
        options: uvicorn.run's keyword arguments (bind address, timeouts, logging).
    """
    import uvicorn

    proc, path = start_engine_process(settings)
    os.environ["DINOSERVE_SERVE__ENGINE_SOCKET"] = str(path)
    # The workers' app factory decides on anonymous access from the bind address (api.access):
    # hand them --host, which is not in their environment otherwise.
    host_before = os.environ.get("DINOSERVE_SERVE__HOST")
    os.environ["DINOSERVE_SERVE__HOST"] = str(options["host"])
    try:
        uvicorn.run("api.main:create_app", factory=True, workers=settings.serve.workers, **options)
    finally:
        os.environ.pop("DINOSERVE_SERVE__ENGINE_SOCKET", None)
        if host_before is None:
            os.environ.pop("DINOSERVE_SERVE__HOST", None)
        else:
            os.environ["DINOSERVE_SERVE__HOST"] = host_before
        stop_engine_process(proc, path)
