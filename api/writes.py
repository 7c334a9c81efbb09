"""Writes to collections over HTTP (api/routes/collections.py): adding uploaded images, labels,
deletions, and the gate that keeps them from being lost across a refresh.

A write goes to the physical collection the alias points to, and only when that holds the
served model version's embeddings. A refresh re-embeds while writes go on, catches up with them
in further passes (refresh.job.RefreshJob.catch_up), then closes the gate: new writes answer
409 with Retry-After, the refresh waits for those in flight, runs a last catch-up pass, flips the
aliases and swaps the served model, and opens the gate again. So every write that was answered
200 is in the collection that is served afterwards.

Uploaded bytes are kept content-addressed (core.blobs); a point names them as `blob://<sha256>`.
A blob is removed with the last point, in any collection, that names it: moved aside, the
points counted again, put back if one appeared meanwhile; and an add writes its blob again
after its upsert if a removal took it. No lock is needed, so replicas sharing the blob volume
and a Qdrant server never lose a blob a point names.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np

from api.vectors import VersionMismatch
from core import blobs, store
from core.blobs import Blobs, blob_uri, is_blob
from core.store import Match, Point, Store, StoreError, UnknownCollection

SWITCH_RETRY_S = 1  # the gate is closed for one catch-up pass and a flip: seconds, not minutes


class WritesPaused(Exception):
    """The collections are switching to another model version: retry in SWITCH_RETRY_S (409)."""


class UnknownImage(LookupError):
    """No such point in the collection (404)."""


class CollectionExists(Exception):
    """The collection exists with another model version's embeddings (409)."""


class WriteGate:
    """Writes run inside `entry()`; a refresh holds `closed()` for its last pass and flip.

    Counted on the event loop only (no lock needed)."""

    def __init__(self) -> None:
        self.is_closed = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def entry(self) -> AsyncIterator[None]:
        """One write. Raises WritesPaused while the gate is closed."""
        if self.is_closed:
            raise WritesPaused(
                "the collections are switching to another model version; retry in a moment"
            )
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    @asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """Refuse new writes and wait until none is in flight; open again on exit."""
        self.is_closed = True
        try:
            await self._idle.wait()
            yield
        finally:
            self.is_closed = False


@dataclass(frozen=True)
class NewImage:
    """One uploaded image: its bytes, optional label and the client's own name for it."""

    data: bytes
    label: str | None = None
    source_uri: str | None = None

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def point_id(self) -> str:
        # The client's name when given (re-sending it replaces the point, whatever the bytes),
        # else the content: the same bytes twice are one point.
        return store.point_id(self.source_uri or blob_uri(self.sha256))


def payload_of(img: NewImage, sha: str, size: tuple[int, int], version: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "uri": blob_uri(sha),
        "label": img.label,
        "source_uri": img.source_uri,
        "sha256": sha,
        "width": size[0],
        "height": size[1],
        "model_version": version,
        "indexed_at": now,
    }


class Writer:
    """The store side of the writes (blocking: run in a worker thread)."""

    def __init__(self, db: Store, blobs: Blobs) -> None:
        self.db, self.blobs = db, blobs

    def target(self, name: str, version: str) -> str:
        """The physical collection writes to `name` go to under model `version`.

        Raises:
            UnknownCollection: no such collection (→ 404).
            VersionMismatch: it holds another version's embeddings.
        """
        physical = self.db.resolve_alias(name)
        if physical is None:
            self.db.resolve(name)  # raises UnknownCollection listing the collections
            raise UnknownCollection(f"no collection named {name!r}")
        if physical != store.physical_name(name, version):
            held = store.version_of(physical) or "unknown"
            raise VersionMismatch(
                f"collection {name!r} holds embeddings of model version {held}, this service "
                f"runs {version}: refresh it (POST /admin/refresh) before writing to it"
            )
        return physical

    def unchanged(self, physical: str, images: list[NewImage]) -> dict[str, Point]:
        """The points that already hold an image's bytes, with their vectors: not re-embedded."""
        sha = {i.point_id: i.sha256 for i in images}
        fields = ["sha256", "width", "height"]
        found = self.db.retrieve(physical, list(sha), fields, vectors=True)
        return {p.id: p for p in found if p.payload.get("sha256") == sha[p.id] and p.vector}

    def keep_bytes(self, images: list[NewImage]) -> None:
        """Write the blobs (before the points that name them; while the engine embeds).

        Raises:
            BlobStoreFull: they would take the blob store past DINOSERVE_BLOB_MAX_BYTES; none
                is written (and so no point: the add stops here, → 507).
        """
        self.blobs.ensure_all((img.sha256, img.data) for img in images)

    def add(
        self,
        physical: str,
        fresh: list[tuple[NewImage, tuple[int, int]]],
        vectors: np.ndarray | None,
        same: list[tuple[NewImage, Point]],
        version: str,
    ) -> None:
        """Write the points (their blobs written by `keep_bytes` first): `fresh` with their new
        vectors, `same` (their point already holds these bytes) with the stored vector. One
        upsert replaces each point whole, so a concurrent delete never leaves half a write."""
        everything = [img for img, _ in fresh] + [img for img, _ in same]
        ids = [img.point_id for img in everything]
        before = {
            p.id: str(p.payload.get("uri", "")) for p in self.db.retrieve(physical, ids, ["uri"])
        }
        payloads = [payload_of(img, img.sha256, size, version) for img, size in fresh]
        payloads += [
            payload_of(
                img, img.sha256, (p.payload.get("width", 0), p.payload.get("height", 0)), version
            )
            for img, p in same
        ]
        rows = [] if vectors is None else list(np.asarray(vectors, np.float32))
        rows += [np.asarray(p.vector, np.float32) for _, p in same]
        self.db.upsert(physical, ids, np.stack(rows), payloads, index_segments=False)
        for img in everything:  # a concurrent delete may have removed the blob meanwhile
            self.blobs.ensure(img.sha256, img.data, limit=False)  # its point names it now
        now = {img.point_id: blob_uri(img.sha256) for img in everything}
        for pid, uri in before.items():  # a client name re-sent with other bytes
            if uri != now[pid] and is_blob(uri):
                self.release(uri)

    def relabel(self, physical: str, pid: str, label: str | None) -> dict[str, Any]:
        """Set or remove (None) a point's label; returns its payload after."""
        if self.db.point(physical, pid, ["uri"]) is None:
            raise UnknownImage(f"no image {pid} in the collection")
        try:
            self.db.set_payload(physical, [pid], {"label": label})
        except StoreError:
            if self.db.point(physical, pid, ["uri"]) is not None:
                raise  # not the race below: the store failed
        point = self.db.point(physical, pid)
        if point is None:  # deleted meanwhile
            raise UnknownImage(f"no image {pid} in the collection")
        return point.payload

    def relabel_many(
        self, physical: str, ids: list[str], label: str | None, chunk: int = 1024
    ) -> int:
        """Set or remove (None) the label of many points (a cluster's members): those of `ids`
        that still exist, a chunk per store call. Returns how many were labelled."""
        done = 0
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            present = [p.id for p in self.db.retrieve(physical, part, ["uri"])]
            try:
                self.db.set_payload(physical, present, {"label": label})
            except StoreError:
                # As in `relabel`: a point deleted meanwhile fails the call; the rest again.
                again = {p.id for p in self.db.retrieve(physical, present, ["uri"])}
                if again == set(present):
                    raise
                present = [pid for pid in present if pid in again]
                self.db.set_payload(physical, present, {"label": label})
            done += len(present)
        return done

    def delete(self, physical: str, pid: str) -> bool:
        """Delete a point, and its uploaded bytes when no point uses them any more. Returns
        whether the bytes were removed.

        Raises:
            UnknownImage: the point is not there.
        """
        point = self.db.point(physical, pid, ["uri"])
        if point is None:
            raise UnknownImage(f"no image {pid} in the collection")
        self.db.delete_points(physical, [pid])
        uri = str(point.payload.get("uri", ""))
        return is_blob(uri) and self.release(uri)

    def release(self, uri: str) -> bool:
        """Remove the blob of `uri` if no point names it (core.blobs.release); True if so."""
        return blobs.release(self.db, self.blobs, uri)

    def info(self, name: str) -> dict[str, Any]:
        """Points, labelled points and label counts of a logical collection."""
        physical = self.db.resolve_alias(name)
        if physical is None:
            self.db.resolve(name)
            raise UnknownCollection(f"no collection named {name!r}")
        return {
            "name": name,
            "physical_collection": physical,
            "model_version": store.version_of(physical),
            "points": self.db.count(physical),
            "labelled": self.db.count(physical, Match(labelled_only=True)),
            "labels": self.db.facet(physical, "label"),
        }

    def all_info(self) -> list[dict[str, Any]]:
        return [self.info(name) for name in sorted(self.db.aliases())]

    def create(self, name: str, version: str, dim: int) -> tuple[dict[str, Any], bool]:
        """An empty collection for `version` (and its alias); (info, created).

        Raises:
            CollectionExists: it exists with another version's embeddings.
        """
        expected = store.physical_name(name, version)
        physical = self.db.resolve_alias(name)
        if physical is not None and physical != expected:
            raise CollectionExists(
                f"collection {name!r} exists with model version {store.version_of(physical)}"
            )
        created = physical is None
        if created:
            self.db.ensure_collection(name, version, dim)
            self.db.point_alias(name, expected)
        return self.info(name), created
