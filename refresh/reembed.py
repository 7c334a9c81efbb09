"""Re-embedding a collection with another model version, and the one-call alias flip.

A refresh reads every point of `<name>__<old>`, reads its image again from the payload's `uri`,
embeds it with the new model and writes it, same id and payload (new `model_version`,
`indexed_at`, and the `sha256`/size of the bytes read now), into `<name>__<new>`. Points already
there with the same sha256 are skipped, so a refresh that was killed resumes where it stopped.
Only when every collection is complete do the aliases move, all in one Qdrant call.

The same pass, run again, is the catch-up after writes over HTTP (api/routes/collections.py)
changed the source meanwhile: new or replaced images are embedded, changed labels (any payload
that is not derived from the bytes) copied, and points deleted from the source deleted from the
target; what already matches costs one read. What has to be embedded goes through the same
pipelined core as `dinoserve index` (indexer/ingest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.engines import Engine
from core.store import Store
from indexer.ingest import RESERVED, Batch, Ingest, IngestOptions, Item, Limits, Stopped

__all__ = ["DERIVED", "MAX_REPORTED", "ReembedReport", "Stopped", "changes", "reembed"]

MAX_REPORTED = 100  # failures listed in a report (all are counted)
# Payload a re-embedding writes anew from the bytes and the model; the rest is the user's
# (label, uri, external ids, manifest columns) and is copied as it is.
DERIVED = frozenset({"sha256", "width", "height", "model_version", "indexed_at"})


@dataclass
class ReembedReport:
    source: str
    target: str
    total: int = 0
    done: int = 0  # points handled: written, already there, or failed
    written: int = 0
    unchanged: int = 0  # already in the target with the same sha256 (a resumed refresh)
    synced: int = 0  # same bytes, other label (or user payload): payload copied
    deleted: int = 0  # in the target but no longer in the source
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # first MAX_REPORTED

    def count(self, batch: Batch) -> None:
        """Add one ingested batch."""
        self.done += batch.size
        self.written += len(batch.ids)
        self.unchanged += batch.unchanged
        self.failed += len(batch.failures)
        room = MAX_REPORTED - len(self.failures)
        self.failures.extend(batch.failures[: max(0, room)])


def reembed(
    q: Store,
    source: str,
    target: str,
    engine: Engine,
    max_pixels: int,
    batch: int = 32,
    workers: int = 2,
    progress: Callable[[ReembedReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    blob_dir: Path | None = None,
    optimize: bool = True,
) -> ReembedReport:
    """Fill physical collection `target` (which must exist) with every point of `source`,
    embedded by `engine`.

    Args:
        q: the store.
        source: the physical collection of the served version.
        target: `<name>__<engine.model_version>`.
        engine: the new model.
        max_pixels: decoding limit (DINOSERVE_MAX_PIXELS).
        batch: points per scroll page, engine call and upsert.
        workers: threads reading and decoding images.
        progress: called after every batch with the running report.
        should_stop: polled between batches; True raises Stopped.
        blob_dir: where `blob://` URIs (uploaded images) are read.
        optimize: build the target's index at the end (a catch-up pass that changed little
            leaves that to the search's exact scan of the few new points).
    Images whose source is gone or no longer decodes are counted, reported and left out.
    Points of `target` that are not in `source` are deleted.
    """
    report = ReembedReport(source, target, total=q.count(source))
    todo, seen = _compare(q, source, target, batch, report, should_stop)

    def counted(b: Batch) -> None:
        report.count(b)
        if progress is not None:
            progress(report)

    limits = Limits(max_pixels=max_pixels, max_bytes=None)
    ingest = Ingest(q, engine, target, IngestOptions(batch, workers, limits, blob_dir))
    ingest.run(todo, counted, should_stop)
    gone = [p.id for p in q.iter_points(target, ["sha256"]) if p.id not in seen]
    q.delete_points(target, gone)
    report.deleted = len(gone)
    if optimize:
        q.optimize(target)
    return report


def changes(report: ReembedReport) -> int:
    """Points a pass wrote, re-labelled or deleted (0: the target matched the source)."""
    return report.written + report.synced + report.deleted


def _user(payload: dict[str, Any]) -> dict[str, Any]:
    # A null is no value (a removed label is stored as null): equal to a missing key.
    return {k: v for k, v in payload.items() if k not in DERIVED and v is not None}


def _compare(
    q: Store,
    source: str,
    target: str,
    page: int,
    report: ReembedReport,
    should_stop: Callable[[], bool] | None,
) -> tuple[list[Item], set[str]]:
    """One read of both collections: points already in `target` with the same sha256 are
    counted unchanged (their user payload copied where it differs); the rest are returned as
    items to ingest, with their ids, labels and payload. Also returns every id of `source`."""
    todo: list[Item] = []
    seen: set[str] = set()
    offset: Any = None
    while True:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped while re-embedding {source}")
        records, offset = q.scroll(source, None, offset, page)
        seen.update(r.id for r in records)
        there = {p.id: p.payload for p in q.retrieve(target, [r.id for r in records])}
        for r in records:
            old = there.get(r.id)
            if old is None or old.get("sha256") != r.payload.get("sha256", ""):
                extra = {k: v for k, v in r.payload.items() if k not in RESERVED}
                label = r.payload.get("label")
                todo.append(Item(str(r.payload.get("uri", "")), label, extra, r.id))
                continue
            report.unchanged += 1
            report.done += 1
            mine, theirs = _user(r.payload), _user(old)
            if mine != theirs:  # relabelled (or label removed: null, which filters read as none)
                q.set_payload(target, [r.id], {**{k: None for k in theirs}, **mine})
                report.synced += 1
        if offset is None:
            return todo, seen
