"""Re-embedding a collection with another model version, and the one-call alias flip.

A refresh reads every point of `<name>__<old>`, reads its image again from the payload's `uri`,
embeds it with the new model and writes it, same id and payload (new `model_version`,
`indexed_at`, and the `sha256`/size of the bytes read now), into `<name>__<new>`. Points already
there with the same sha256 are skipped, so a refresh that was killed resumes where it stopped.
Only when every collection is complete do the aliases move, all in one Qdrant call.

The same pass, run again, is the catch-up after writes over HTTP (api/routes/collections.py)
changed the source meanwhile: new or replaced images are embedded, changed labels (any payload
that is not derived from the bytes) copied, and points deleted from the source deleted from the
target; what already matches costs one read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.engines import Engine
from core.images import ImageRejected, decode_image
from core.store import Point, Store
from core.uris import reader

MAX_REPORTED = 100  # failures listed in a report (all are counted)
# Payload a re-embedding writes anew from the bytes and the model; the rest is the user's
# (label, uri, external ids, manifest columns) and is copied as it is.
DERIVED = frozenset({"sha256", "width", "height", "model_version", "indexed_at"})


class Stopped(RuntimeError):
    """The refresh was asked to stop (service shutting down)."""


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


def _load(
    uri: str, engine: Engine, max_pixels: int, blob_dir: Path | None = None
) -> tuple[np.ndarray, dict[str, Any]] | dict[str, str]:
    """(preprocessed image, payload update) or a failure record."""
    try:
        data = reader(uri, blob_dir)()
        img = decode_image(data, max_pixels)
    except OSError as exc:
        return {"uri": uri, "reason": "unreadable", "message": str(exc)}
    except ImageRejected as exc:
        return {"uri": uri, "reason": exc.reason, "message": str(exc)}
    sha = hashlib.sha256(data).hexdigest()
    return engine.preprocess(img), {"sha256": sha, "width": img.width, "height": img.height}


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
    offset: Any = None
    seen: set[str] = set()
    with ThreadPoolExecutor(workers, thread_name_prefix="reembed") as pool:
        while True:
            if should_stop is not None and should_stop():
                raise Stopped(f"stopped while re-embedding {source}")
            records, offset = q.scroll(source, None, offset, batch)
            seen.update(r.id for r in records)
            _one_batch(q, records, target, engine, max_pixels, pool, report, blob_dir)
            if progress is not None:
                progress(report)
            if offset is None:
                break
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


def _one_batch(
    q: Store,
    records: list[Point],
    target: str,
    engine: Engine,
    max_pixels: int,
    pool: ThreadPoolExecutor,
    report: ReembedReport,
    blob_dir: Path | None = None,
) -> None:
    there = {p.id: p.payload for p in q.retrieve(target, [r.id for r in records])}
    todo = []
    for r in records:
        old = there.get(r.id)
        if old is None or old.get("sha256") != r.payload.get("sha256", ""):
            todo.append(r)
            continue
        report.unchanged += 1
        mine, theirs = _user(r.payload), _user(old)
        if mine != theirs:  # relabelled (or label removed: null, which filters read as none)
            q.set_payload(target, [r.id], {**{k: None for k in theirs}, **mine})
            report.synced += 1
    loaded = list(pool.map(
        lambda r: _load(str(r.payload.get("uri", "")), engine, max_pixels, blob_dir), todo
    ))  # fmt: skip
    ok = [(r, x) for r, x in zip(todo, loaded, strict=True) if isinstance(x, tuple)]
    for x in loaded:
        if isinstance(x, dict):
            report.failed += 1
            if len(report.failures) < MAX_REPORTED:
                report.failures.append(x)
    if ok:
        vectors = engine.embed(np.stack([arr for _, (arr, _) in ok]))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        new = {"model_version": engine.model_version, "indexed_at": now}
        payloads = [{**r.payload, **update, **new} for r, (_, update) in ok]
        q.upsert(target, [r.id for r, _ in ok], vectors, payloads)
        report.written += len(ok)
    report.done += len(records)
