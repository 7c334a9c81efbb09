"""The indexing run of one source into one logical collection: the alias, a shard's share of
the items, images uploaded over HTTP carried into a new version's collection, pruning and the
report — around the ingestion core (indexer/ingest.py: read → hash → skip unchanged → decode →
embed → upsert, overlapped), which a refresh's re-embedding runs too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core import store
from core.blobs import is_blob
from core.engines import Engine
from core.store import Store
from indexer.ingest import RESERVED, Batch, Ingest, IngestOptions, Item, Limits, Stopped
from indexer.sources import in_shard

__all__ = ["IndexReport", "Indexer", "Limits", "Stopped"]

log = logging.getLogger(__name__)


class _SegmentWatch:
    """While embedding goes on, the store may stop to index a segment of what was written
    (`Store.upsert`, every `segment_points`): this shows it on the progress bar, polled from a
    thread of its own (the writer thread is the one waiting)."""

    def __init__(self, db: Store, physical: str, bar: tqdm, every_s: float = 1.0) -> None:
        self.db, self.physical, self.bar, self.every_s = db, physical, bar, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segment-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        shown = False
        while not self._done.wait(self.every_s):
            t = self.db.building(self.physical)
            if t is not None:
                self.bar.set_postfix_str(f"indexing a segment, {t:.0f}s")
                shown = True
            elif shown:
                self.bar.set_postfix_str("")
                shown = False

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


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
    # "embedding", then "building index" while the search index builds (minutes at a million
    # points), then "done"; `building_s` is how long the index has been building.
    stage: str = "embedding"
    building_s: float = 0.0

    def summary(self) -> str:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        return (
            f"{self.collection} → {self.physical}: {self.indexed} indexed, {self.unchanged} "
            f"unchanged, {self.failed} failed, {self.pruned} pruned of {self.total} "
            f"in {self.seconds:.1f}s ({rate:.1f} img/s)"
        )


class Indexer:
    """Indexes one source into one logical collection.

    Args:
        db: the store (embedded or server).
        engine: the model (its version names the physical collection).
        collection: logical name (the alias).
        options: how items are ingested (`IngestOptions`); its `blob_dir`
            (DINOSERVE_BLOB_DIR) is where images uploaded over HTTP are read when a run carries
            them into a new model version's collection.
    """

    def __init__(
        self, db: Store, engine: Engine, collection: str, options: IngestOptions | None = None
    ) -> None:
        self.db, self.engine = db, engine
        self.collection = store.check_name(collection)
        self.options = options or IngestOptions()

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

        def counted(batch: Batch) -> None:
            report.indexed += len(batch.ids)
            report.unchanged += batch.unchanged
            report.failed += len(batch.failures)
            failures.extend(batch.failures)
            bar.update(batch.size)
            bar.set_postfix(new=report.indexed, same=report.unchanged, bad=report.failed)
            if on_batch is not None:
                on_batch(report, bar.n)

        ingest = Ingest(self.db, self.engine, physical, self.options)
        watch = _SegmentWatch(self.db, physical, bar)  # a segment's build shows on the bar
        try:
            ingest.run(mine, counted, should_stop)
        finally:
            watch.stop()
            bar.close()
        if prune:
            report.pruned = self._prune(physical, mine, shard)
        if report.indexed or report.pruned:
            self._build(physical, report, progress, on_batch)
        report.stage = "done"
        if failures_path is not None:
            failures_path.parent.mkdir(parents=True, exist_ok=True)
            failures_path.write_text("".join(json.dumps(f) + "\n" for f in failures))
            report.failures_path = str(failures_path)
        report.seconds = time.perf_counter() - t0
        return report

    def _build(
        self,
        physical: str,
        report: IndexReport,
        progress: bool,
        on_batch: Callable[[IndexReport, int], None] | None,
    ) -> None:
        """Build the search index (queries right after the run use it), as a stage of the
        run's progress: on a large collection it takes minutes."""
        report.stage = "building index"
        done = report.indexed + report.unchanged + report.failed
        if on_batch is not None:
            on_batch(report, done)
        fmt = "{desc}: {elapsed}{postfix}"
        with tqdm(desc=f"build index {physical}", bar_format=fmt, disable=not progress) as bar:

            def waiting(elapsed: float) -> None:
                report.building_s = elapsed
                bar.refresh()
                if on_batch is not None:
                    on_batch(report, done)

            self.db.optimize(physical, on_wait=waiting)

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
