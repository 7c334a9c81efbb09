"""The one ingestion core: read → hash → skip unchanged → decode → embed → write, overlapped.

`dinoserve index` (indexer/pipeline.py) and a refresh's re-embedding (refresh/reembed.py) both run
it, into one physical collection. A producer thread reads, hashes and decodes batch k+1
(decoding in a worker pool, or on the engine's device) while the calling thread embeds batch k
and a writer thread upserts batch k−1. A point is written only with its embedding and the
sha256 of the bytes it came from, so a run killed at any moment and started again ends with
exactly the right points: images whose stored sha256 matches are skipped, the rest done.

The decode threads run at the lowest CPU priority (nice 19, Linux: per thread), so that on a CPU
the engine's threads always have the cores. A CPU runtime splits every op over its threads and
waits for the slowest: a decode thread that takes the core of one of them stalls them all. Measured
on 2 cores with OpenVINO int8 ViT-S/16 (bench/index_e2e.py): one decode thread at the same
priority halved the engine's img/s (56.6 → 26.3); at nice 19 the engine kept 41–48 img/s while
the thread still decoded faster than the engine embeds, in the time the engine's threads leave.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.engines import Engine
from core.images import ImageRejected, decode_image
from core.store import Store, point_id
from core.uris import TAR_SCHEME, reader, split_tar

# Payload the pipeline writes itself; the rest of a point's payload is the item's `extra`.
RESERVED = frozenset({"uri", "label", "sha256", "width", "height", "model_version", "indexed_at"})


class Stopped(RuntimeError):
    """The run was asked to stop (the service is shutting down); what is written stays."""


@dataclass(frozen=True)
class Item:
    """One image to ingest: where its bytes are, its label and the rest of its payload."""

    uri: str
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # the point id, when not the UUIDv5 of `uri` (an uploaded image's)

    @property
    def point_id(self) -> str:
        return self.id or point_id(self.uri)


@dataclass
class Limits:
    max_pixels: int = 40_000_000
    max_bytes: int | None = 64 * 1024 * 1024  # None: no limit (images already admitted once)


class BatchDecode(Protocol):
    """Decoding of a whole batch elsewhere than the decode threads (indexer/device.py)."""

    def decode_many(self, datas: list[bytes], limits: Limits) -> list[Any]: ...

    def stack(self, rows: list[Any]) -> Any: ...

    def embed(self, batch: Any) -> np.ndarray: ...


@dataclass
class IngestOptions:
    """How items are ingested, the same for `Ingest`, the indexer and the refresh.

    Args:
        batch: images per engine batch and per upsert.
        workers: read and decode threads.
        limits: per-image byte and pixel limits.
        blob_dir: where `blob://` URIs (images uploaded over HTTP) are read.
        device: decode and preprocess each batch on the engine's device (indexer/device.py)
            instead of in the decode threads.
        executor: where engine calls run (a service's one engine thread, so that requests and
            ingestion take turns); None: in the calling thread.
    """

    batch: int = 32
    workers: int = 4
    limits: Limits = field(default_factory=Limits)
    blob_dir: Path | None = None
    device: BatchDecode | None = None
    executor: Executor | None = None

    def __post_init__(self) -> None:
        self.batch, self.workers = max(1, self.batch), max(1, self.workers)


@dataclass
class Batch:
    """One batch through the pipeline: what was written, skipped and left out."""

    ids: list[str] = field(default_factory=list)
    arrays: list[Any] = field(default_factory=list)
    payloads: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # {"uri", "reason", "message"}
    unchanged: int = 0
    size: int = 0  # items handled: written, unchanged or failed


def stream_bytes(
    items: list[Item], pool: ThreadPoolExecutor, window: int, blob_dir: Path | None = None
) -> Iterator[tuple[Item, bytes | Exception]]:
    """Bytes of each item; tar members are streamed in one pass of each archive, files read by
    the pool `window` at a time (never the whole source in memory)."""
    tar_items = [it for it in items if it.uri.startswith(TAR_SCHEME)]
    if tar_items:
        yield from _stream_tar(tar_items)
    files = [it for it in items if not it.uri.startswith(TAR_SCHEME)]

    def read(it: Item) -> bytes | Exception:
        try:
            return reader(it.uri, blob_dir)()
        except OSError as exc:
            return exc

    for start in range(0, len(files), window):
        part = files[start : start + window]
        yield from zip(part, pool.map(read, part), strict=True)


def _stream_tar(items: list[Item]) -> Iterator[tuple[Item, bytes | Exception]]:
    by_archive: dict[str, dict[str, Item]] = {}
    for it in items:
        archive, member = split_tar(it.uri)
        by_archive.setdefault(archive, {})[member] = it
    for archive, wanted in by_archive.items():
        with tarfile.open(archive, "r|*") as tar:  # streaming: one sequential pass
            for m in tar:
                it = wanted.pop(m.name, None)
                if it is not None:
                    f = tar.extractfile(m)
                    yield it, (f.read() if f else OSError("not a regular file"))
        for it in wanted.values():
            yield it, OSError("member disappeared from the archive")


DECODE_NICE = 19  # the decode threads' niceness (see the module docstring)


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux, where niceness is per thread;
    elsewhere a no-op: os.setpriority would take the thread id for a process id)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICE)


def _decode(data: bytes, engine: Engine, limits: Limits) -> tuple[Any, int, int] | ImageRejected:
    try:
        img = decode_image(data, limits.max_pixels, limits.max_bytes)
        return engine.preprocess(img), img.width, img.height
    except ImageRejected as exc:
        return exc


class Ingest:
    """Writes items into one physical collection with one engine (see the module docstring).

    Args:
        db: the store.
        engine: the model; its version is written into every payload.
        physical: the physical collection (it must exist).
        options: batch size, threads, limits, where blobs and batches are read and embedded.
    """

    def __init__(
        self, db: Store, engine: Engine, physical: str, options: IngestOptions | None = None
    ) -> None:
        self.db, self.engine, self.physical = db, engine, physical
        o = self.options = options or IngestOptions()
        self.batch, self.workers, self.limits = o.batch, o.workers, o.limits
        self.blob_dir, self.device, self.executor = o.blob_dir, o.device, o.executor

    def run(
        self,
        items: list[Item],
        on_batch: Callable[[Batch], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Ingest `items`; never aborts on a bad image (it is in its batch's `failures`).

        Args:
            on_batch: called with every batch once it is embedded and its upsert submitted.
            should_stop: polled between batches; True raises Stopped.
        """
        prepared: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=2)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(items, prepared, stop), daemon=True)
        producer.start()
        pending: Future | None = None
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="upsert") as writer:
                while (batch := prepared.get()) is not None:
                    if isinstance(batch, BaseException):
                        raise batch
                    vectors = self._embed(batch)
                    if pending is not None:
                        pending.result()  # one upsert in flight; errors surface here
                    pending = writer.submit(
                        self.db.upsert, self.physical, batch.ids, vectors, batch.payloads
                    )
                    if on_batch is not None:
                        on_batch(batch)
                    if should_stop is not None and should_stop():
                        raise Stopped(f"stopped while writing {self.physical}")
                if pending is not None:
                    pending.result()
        finally:
            # The writer's pool has waited for its upsert; the producer may still be reading the
            # store (existing_hashes) or blocked on a full queue. Wait for it before returning,
            # so a caller that drops the collection next (a failed refresh's abort) never races
            # a read of the same shard.
            stop.set()
            while producer.is_alive():
                with contextlib.suppress(queue.Empty):
                    prepared.get(timeout=0.05)
            producer.join()

    def _produce(self, items: list[Item], out: queue.Queue, stop: threading.Event) -> None:
        try:
            # Only the pool's threads are lowered: this thread reads the store, whose
            # runtime may start threads of its own that would inherit the priority.
            with ThreadPoolExecutor(
                self.workers, thread_name_prefix="decode", initializer=lower_priority
            ) as pool:
                stream = stream_bytes(items, pool, 2 * self.batch, self.blob_dir)
                while not stop.is_set():
                    chunk = [x for _, x in zip(range(self.batch), stream, strict=False)]
                    if not chunk:
                        break
                    out.put(self._prepare(chunk, pool))
            out.put(None)
        except BaseException as exc:
            out.put(exc)

    def _prepare(
        self, chunk: list[tuple[Item, bytes | Exception]], pool: ThreadPoolExecutor
    ) -> Batch:
        result = Batch(size=len(chunk))
        ids = [it.point_id for it, _ in chunk]
        existing = self.db.existing_hashes(self.physical, ids)
        todo = []
        for pid, (it, data) in zip(ids, chunk, strict=True):
            if isinstance(data, Exception):
                result.failures.append(
                    {"uri": it.uri, "reason": "unreadable", "message": str(data)}
                )
                continue
            sha = hashlib.sha256(data).hexdigest()
            if existing.get(pid) == sha:
                result.unchanged += 1
            else:
                todo.append((pid, it, data, sha))
        if self.device is not None:
            decoded = self.device.decode_many([t[2] for t in todo], self.limits)
        else:
            decoded = pool.map(lambda t: _decode(t[2], self.engine, self.limits), todo)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for (pid, it, _, sha), dec in zip(todo, decoded, strict=True):
            if isinstance(dec, ImageRejected):
                result.failures.append({"uri": it.uri, "reason": dec.reason, "message": str(dec)})
                continue
            arr, w, h = dec
            result.ids.append(pid)
            result.arrays.append(arr)
            result.payloads.append(
                {
                    **it.extra,
                    "uri": it.uri,
                    "label": it.label,
                    "sha256": sha,
                    "width": w,
                    "height": h,
                    "model_version": self.engine.model_version,
                    "indexed_at": now,
                }
            )
        return result

    def _embed(self, batch: Batch) -> np.ndarray:
        if not batch.arrays:
            return np.zeros((0, self.engine.dim), np.float32)
        if self.device is not None:
            embed, rows = self.device.embed, self.device.stack(batch.arrays)
        else:
            embed, rows = self.engine.embed, np.stack(batch.arrays)
        if self.executor is None:
            return embed(rows)
        return self.executor.submit(embed, rows).result()
