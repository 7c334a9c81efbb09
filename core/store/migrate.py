"""Moving points between stores without re-embedding: the one-time migration of the previous
version's embedded store (qdrant-client's local mode) into Qdrant Edge, and
`dinoserve store export --to URL` (every collection and alias to a server).

Both copy ids, vectors and payloads page by page and skip points the target already holds with
the same sha256, so an interrupted copy started again resumes and ends with the same points.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.store.base import Store
from core.store.layout import Layout

log = logging.getLogger(__name__)
BACKUP = "local-mode-backup"
LOCAL_MODE_FILES = ("meta.json", "collection", ".lock")


@dataclass
class CopyReport:
    collections: dict[str, dict[str, int]] = field(default_factory=dict)  # name → counts
    aliases: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        rows = [
            f"{n}: {c['copied']} copied, {c['skipped']} already there of {c['total']}"
            for n, c in self.collections.items()
        ]
        rows.append(f"aliases: {', '.join(f'{a} → {p}' for a, p in self.aliases.items()) or '-'}")
        return "\n".join(rows)


def copy_store(
    src: Store,
    dst: Store,
    page: int = 512,
    progress: Callable[[str, int, int], None] | None = None,
) -> CopyReport:
    """Copy every physical collection of `src` into `dst` (same names, ids, vectors, payloads),
    then point `dst`'s aliases like `src`'s in one step.

    Args:
        page: points per read and write.
        progress: called with (collection, done, total) after every page.
    """
    report = CopyReport()
    for name in src.collections():
        total = src.count(name)
        dst.create_physical(name, src.dim(name))
        dst_name = name
        counts = {"total": total, "copied": 0, "skipped": 0}
        done, offset = 0, None
        while True:
            points, offset = src.scroll(name, None, offset, page, vectors=True)
            there = dst.existing_hashes(dst_name, [p.id for p in points])
            todo = [
                p for p in points if p.id not in there or there[p.id] != p.payload.get("sha256", "")
            ]
            if todo:
                vectors = np.asarray([p.vector for p in todo], dtype=np.float32)
                dst.upsert(dst_name, [p.id for p in todo], vectors, [p.payload for p in todo])
            counts["copied"] += len(todo)
            counts["skipped"] += len(points) - len(todo)
            done += len(points)
            if progress is not None:
                progress(name, done, total)
            if offset is None:
                break
        dst.optimize(dst_name)
        report.collections[name] = counts
    report.aliases = src.aliases()
    dst.flip(report.aliases)
    return report


def is_local_mode(path: Path) -> bool:
    """True for a directory written by qdrant-client's local mode (`QdrantClient(path=…)`)."""
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    try:
        return "collections" in json.loads(meta.read_text())
    except (OSError, ValueError):
        return False


def migrate_local_mode(path: Path, edge: Store) -> CopyReport:
    """Copy the local-mode store at `path` into `edge` (a fresh Edge layout in the same
    directory; a Store, as core.store.edge imports this module), then move the local-mode
    files into `path/local-mode-backup/`.

    Interrupted, it is simply done again on the next open: the Edge layout is only marked
    complete (by the caller) after this returns.
    """
    from qdrant_client import QdrantClient

    from core.store.server import ServerStore

    log.warning("migrating the embedded store %s from local mode to Qdrant Edge (once)", path)
    client = QdrantClient(path=str(path))
    try:
        src = ServerStore(client, str(path), Layout())
        report = copy_store(
            src, edge, progress=lambda n, d, t: log.info("migrating %s: %d/%d", n, d, t)
        )
    finally:
        client.close()
    backup = path / BACKUP
    backup.mkdir(exist_ok=True)
    for name in LOCAL_MODE_FILES:
        if (path / name).exists():
            shutil.move(str(path / name), str(backup / name))
    log.warning(
        "migrated %s: %s; the old files are in %s (delete it once all is well)",
        path,
        "; ".join(report.summary().splitlines()),
        backup,
    )
    return report
