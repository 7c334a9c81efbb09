"""The indexing run: read → hash → skip unchanged → decode → embed → upsert, overlapped.

A producer thread reads, hashes and decodes batch k+1 (decoding in a worker pool) while the
main thread embeds batch k and a writer thread upserts batch k−1. A point is written only with
its embedding and the sha256 of the bytes it came from, so a run killed at any moment and
started again ends with exactly the right points: unchanged images are skipped, the rest done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from core import store
from core.blobs import is_blob
from core.engines import Engine
from core.images import ImageRejected, decode_image
from core.store import Store
from core.uris import TAR_SCHEME, reader, split_tar
from indexer.sources import RESERVED, Item, in_shard

if TYPE_CHECKING:  # torch is imported only where device decoding is used
    from indexer.device import DeviceDecode

log = logging.getLogger(__name__)


class Stopped(RuntimeError):
    """The run was asked to stop (the service is shutting down)."""


@dataclass
class Limits:
    max_pixels: int = 40_000_000
    max_bytes: int = 64 * 1024 * 1024


@dataclass
class IndexReport:
    collection: str
    physical: str
    total: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0
    seconds: float = 0.0
    failures_path: str | None = None

    def summary(self) -> str:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        return (
            f"{self.collection} → {self.physical}: {self.indexed} indexed, {self.unchanged} "
            f"unchanged, {self.failed} failed, {self.pruned} pruned of {self.total} "
            f"in {self.seconds:.1f}s ({rate:.1f} img/s)"
        )


@dataclass
class _Prepared:
    ids: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    payloads: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    unchanged: int = 0
    size: int = 0


def _stream_bytes(
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


def _decode(
    item: Item, data: bytes, engine: Engine, limits: Limits
) -> tuple[np.ndarray, int, int] | ImageRejected:
    try:
        img = decode_image(data, limits.max_pixels, limits.max_bytes)
        return engine.preprocess(img), img.width, img.height
    except ImageRejected as exc:
        return exc


class Indexer:
    """Indexes one source into one logical collection.

    Args:
        db: the store (embedded or server).
        engine: the model (its version names the physical collection).
        collection: logical name (the alias).
        batch: images per engine batch and per upsert.
        workers: decode threads.
        limits: per-image byte and pixel limits.
        blob_dir: DINOSERVE_BLOB_DIR: images uploaded over HTTP are read from there when a run
            carries them into a new model version's collection.
        device: decode and preprocess each batch on the engine's device (indexer/device.py)
            instead of in the decode threads.
        executor: where engine calls run (a service's one engine thread, so that requests and
            indexing take turns); None: in the calling thread.
    """

    def __init__(
        self,
        db: Store,
        engine: Engine,
        collection: str,
        batch: int = 32,
        workers: int = 4,
        limits: Limits | None = None,
        blob_dir: Path | None = None,
        device: DeviceDecode | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.db, self.engine, self.blob_dir = db, engine, blob_dir
        self.device, self.executor = device, executor
        self.collection = store.check_name(collection)
        self.batch, self.workers = max(1, batch), max(1, workers)
        self.limits = limits or Limits()

    def run(
        self,
        items: list[Item],
        shard: tuple[int, int] = (0, 1),
        prune: bool = False,
        failures_path: Path | None = None,
        progress: bool = True,
        on_batch: Callable[[IndexReport, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> IndexReport:
        """Index `items` (those of this shard); returns counts. Never aborts on a bad image.

        Args:
            progress: show a progress bar.
            on_batch: called after every batch with the running report and the images done.
            should_stop: polled between batches; True raises Stopped (what is written stays).
        """
        t0 = time.perf_counter()
        mine = [it for it in items if in_shard(it.uri, shard)]
        physical = self.db.ensure_collection(
            self.collection, self.engine.model_version, self.engine.dim
        )
        served = self.db.resolve_alias(self.collection)
        if served is None:
            try:
                self.db.point_alias(self.collection, physical)
            except store.StoreError:  # another shard worker created it first
                if self.db.resolve_alias(self.collection) is None:
                    raise
        elif served != physical:
            mine += self._uploads(served, mine, shard)
        report = IndexReport(self.collection, physical, total=len(mine))
        failures: list[dict] = []
        bar = tqdm(total=len(mine), unit="img", disable=not progress, desc=f"index {physical}")
        prepared: queue.Queue[_Prepared | BaseException | None] = queue.Queue(maxsize=2)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(mine, physical, prepared, stop), daemon=True
        )
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
                        self.db.upsert, physical, batch.ids, vectors, batch.payloads
                    )
                    report.indexed += len(batch.ids)
                    report.unchanged += batch.unchanged
                    report.failed += len(batch.failures)
                    failures += batch.failures
                    bar.update(batch.size)
                    bar.set_postfix(new=report.indexed, same=report.unchanged, bad=report.failed)
                    if on_batch is not None:
                        on_batch(report, bar.n)
                    if should_stop is not None and should_stop():
                        raise Stopped(f"stopped while indexing {physical}")
                if pending is not None:
                    pending.result()
        finally:
            stop.set()
            bar.close()
        if prune:
            report.pruned = self._prune(physical, mine, shard)
        if report.indexed or report.pruned:
            self.db.optimize(physical)  # queries right after the run use the built index
        if failures_path is not None:
            failures_path.parent.mkdir(parents=True, exist_ok=True)
            failures_path.write_text("".join(json.dumps(f) + "\n" for f in failures))
            report.failures_path = str(failures_path)
        report.seconds = time.perf_counter() - t0
        return report

    def _produce(
        self, items: list[Item], physical: str, out: queue.Queue, stop: threading.Event
    ) -> None:
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
                stream = _stream_bytes(items, pool, 2 * self.batch, self.blob_dir)
                while not stop.is_set():
                    chunk = [x for _, x in zip(range(self.batch), stream, strict=False)]
                    if not chunk:
                        break
                    out.put(self._prepare(chunk, physical, pool))
            out.put(None)
        except BaseException as exc:
            out.put(exc)

    def _prepare(
        self, chunk: list[tuple[Item, bytes | Exception]], physical: str, pool: ThreadPoolExecutor
    ) -> _Prepared:
        result = _Prepared(size=len(chunk))
        ids = [it.point_id for it, _ in chunk]
        existing = self.db.existing_hashes(physical, ids)
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
            decoded = pool.map(lambda t: _decode(t[1], t[2], self.engine, self.limits), todo)
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

    def _embed(self, batch: _Prepared) -> np.ndarray:
        if not batch.arrays:
            return np.zeros((0, self.engine.dim), np.float32)
        if self.device is not None:
            embed, rows = self.device.embed, self.device.stack(batch.arrays)
        else:
            embed, rows = self.engine.embed, np.stack(batch.arrays)
        if self.executor is None:
            return embed(rows)
        return self.executor.submit(embed, rows).result()

    def _uploads(self, served: str, items: list[Item], shard: tuple[int, int]) -> list[Item]:
        """The images uploaded over HTTP into `served` (the collection the alias points to,
        of another model version), as items that keep their ids, labels and payload: a run
        that builds this version's collection re-embeds them from the blob store, as it does
        every file of the source."""
        have = {it.point_id for it in items}
        return [
            Item(
                uri,
                p.payload.get("label"),
                {k: v for k, v in p.payload.items() if k not in RESERVED},
                p.id,
            )
            for p in self.db.iter_points(served)
            if is_blob(uri := str(p.payload.get("uri", "")))
            and p.id not in have
            and in_shard(uri, shard)
        ]

    def _prune(self, physical: str, items: list[Item], shard: tuple[int, int]) -> int:
        """Delete points of this shard whose source URI is no longer in the source; never an
        image uploaded over HTTP (`blob://`): no source lists it."""
        wanted = {it.point_id for it in items}
        gone = [
            p.id
            for p in self.db.iter_points(physical, ["uri"])
            if p.id not in wanted
            and not is_blob(uri := str(p.payload.get("uri", "")))
            and in_shard(uri, shard)
        ]
        self.db.delete_points(physical, gone)
        return len(gone)
