"""Stores for tests: the embedded Edge store in a folder, and qdrant-client's in-memory mode as
the stand-in for a Qdrant server (nothing here runs a server)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from qdrant_client import QdrantClient

from core.store import Layout, Store
from core.store.edge import EdgeStore
from core.store.server import ServerStore

ALL_FIELDS = ["uri", "label", "sha256", "width", "height", "model_version", "indexed_at"]


def edge_store(path: Path | str, **layout: int) -> EdgeStore:
    return EdgeStore(Path(path), Layout(**layout))


def memory_server(**layout: int) -> ServerStore:
    """An in-process qdrant-client standing in for a server."""
    return ServerStore(QdrantClient(location=":memory:"), "memory://", Layout(**layout))


def copy_store_dir(src: Path, dst: Path) -> None:
    """Copy an embedded store keeping its files sparse: Edge preallocates 32 MiB files (WAL,
    mmapped storage) that hold a few KiB, and a plain copy would write every byte of them."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)


def all_points(db: Store, collection: str, fields: list[str] | None = None) -> dict[str, dict]:
    """id → payload of every point of a collection (alias or physical name)."""
    physical = db.resolve(collection)
    return {p.id: p.payload for p in db.iter_points(physical, fields or ALL_FIELDS)}
