"""Uploaded images, kept content-addressed: `<blob_dir>/<sha256[:2]>/<sha256>`.

Points made by `POST /collections/{name}/images` carry the URI `blob://<sha256>`, which
core.uris reads back from here, so thumbnails and a refresh's re-embedding treat an upload like
any indexed file. The directory may be shared by several replicas (deploy/): every write lands
whole (a temporary file, then linked into place), and a blob is removed only when no point of
any collection names it: moved aside, the points counted again, put back if one appeared
meanwhile (an add, for its part, writes its blob again after its upsert if a removal took it),
so no lock is needed. The hard link fails when the name exists, so every write and removal
knows whether it changed the store's size, kept in a running total (core.blob_usage) against
DINOSERVE_BLOB_MAX_BYTES.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

from core.blob_usage import BlobStoreFull, Usage
from core.store import Match, Store

__all__ = ["BlobStoreFull", "Blobs", "blob_uri", "in_use", "is_blob", "release", "sha_of", "sweep"]

SCHEME = "blob://"
_SHA = re.compile(r"^[0-9a-f]{64}$")


def blob_uri(sha: str) -> str:
    return f"{SCHEME}{sha}"


def is_blob(uri: str) -> bool:
    return uri.startswith(SCHEME)


def sha_of(uri: str) -> str:
    """The sha256 named by a `blob://` URI.

    Raises:
        OSError: not a well-formed blob URI (read as "cannot be read").
    """
    sha = uri[len(SCHEME) :]
    if not is_blob(uri) or not _SHA.fullmatch(sha):
        raise OSError(f"{uri!r} is not a blob URI (blob://<sha256 in hex>)")
    return sha


def _place(src: Path, dst: Path) -> bool:
    """Move `src` to `dst` unless a file is there (then drop `src`); True if it moved.

    A hard link fails on an existing name, so two writers of the same bytes (or a restore
    racing an add) never both count them. Where the file system has no hard links, a rename,
    which may count a racing twin twice (the total errs high until a sweep recounts)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        src.unlink(missing_ok=True)
        return False
    except OSError:  # no hard links here (some network and FUSE file systems)
        existed = dst.exists()
        os.replace(src, dst)
        return not existed
    src.unlink(missing_ok=True)
    return True


class Blobs:
    """The blob directory.

    Args:
        root: DINOSERVE_BLOB_DIR.
        fsync: DINOSERVE_BLOB_FSYNC: each blob reaches the disk before its point is written
            (else when the OS writes it back, as the vector store's own log does).
        max_bytes: DINOSERVE_BLOB_MAX_BYTES: new blobs past it raise BlobStoreFull (None:
            no limit, for readers and sweeps).
    """

    def __init__(self, root: Path | str, fsync: bool = True, max_bytes: int | None = None) -> None:
        self.root, self.fsync = Path(root), fsync
        self.usage = Usage(self.root, max_bytes)

    def path(self, sha: str) -> Path:
        if not _SHA.fullmatch(sha):  # never a path outside the directory
            raise ValueError(f"not a sha256: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store `data` (once: the same bytes are one file) and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        self.ensure(sha, data)
        return sha

    def ensure(self, sha: str, data: bytes, limit: bool = True) -> None:
        """Write the blob unless it is there (written whole or not at all).

        Raises:
            BlobStoreFull: with `limit`, it would take the store past max_bytes.
        """
        self.ensure_all([(sha, data)], limit)

    def ensure_all(self, blobs: Iterable[tuple[str, bytes]], limit: bool = True) -> None:
        """Write each (sha256, bytes) that is not there: room for all of them is reserved
        first, so a request over the limit writes none.

        Args:
            blobs: the blobs, by their sha256.
            limit: refuse past max_bytes. False for bytes a point names already (an add
                writing its blob again after a concurrent removal): they must exist.

        Raises:
            BlobStoreFull: with `limit`, they would take the store past max_bytes (nothing
                written).
        """
        todo = {sha: data for sha, data in blobs if not self.path(sha).is_file()}
        if not todo:
            return
        reserved = sum(len(d) for d in todo.values())
        self.usage.change(reserved, limit)
        written = 0
        try:
            for sha, data in todo.items():
                if self._write(sha, data):
                    written += len(data)
        finally:
            if written != reserved:  # already there (a twin won), or a write failed
                self.usage.change(written - reserved, limit=False)

    def _write(self, sha: str, data: bytes) -> bool:
        """Write one blob through a temporary file; False when it was there already."""
        final = self.path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{sha}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            return _place(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, sha: str) -> bytes:
        """The bytes of a blob. Raises OSError when it is gone."""
        return self.path(sha).read_bytes()

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def hide(self, sha: str) -> Path | None:
        """Move a blob aside (its removal's first step); None when it was not there."""
        src = self.path(sha)
        trash = src.with_name(f".{sha}.{uuid.uuid4().hex[:8]}.gone")
        try:
            os.rename(src, trash)
        except FileNotFoundError:
            return None
        return trash

    def restore(self, sha: str, hidden: Path) -> None:
        """Undo `hide` (a point came to use the blob meanwhile). When its add wrote the blob
        again already, that copy stays and the hidden one goes (counted once)."""
        size = hidden.stat().st_size
        if not _place(hidden, self.path(sha)):
            self.usage.change(-size, limit=False)

    def drop(self, hidden: Path) -> None:
        """Remove a hidden blob for good (its removal's last step) and count it out."""
        try:
            size = hidden.stat().st_size
        except FileNotFoundError:
            return
        hidden.unlink(missing_ok=True)
        self.usage.change(-size, limit=False)


def in_use(db: Store, uri: str) -> bool:
    """Whether a point of any physical collection names `uri` (an older version's, kept for
    rollback, counts too)."""
    return any(db.count(c, Match(uri=uri)) for c in db.collections())


def release(db: Store, blobs: Blobs, uri: str) -> bool:
    """Remove the blob of `uri` if no point names it; True if removed."""
    sha = sha_of(uri)
    if in_use(db, uri):
        return False
    hidden = blobs.hide(sha)
    if hidden is None:
        return False
    if in_use(db, uri):  # an add wrote a point meanwhile
        blobs.restore(sha, hidden)
        return False
    blobs.drop(hidden)
    return True


def sweep(db: Store, blobs: Blobs) -> int:
    """Remove every blob no point names any more (after `models gc` dropped the last
    collections that used some); returns how many."""
    if not blobs.root.is_dir():
        return 0
    used = {
        uri
        for c in db.collections()
        for p in db.iter_points(c, ["uri"])
        if is_blob(uri := str(p.payload.get("uri", "")))
    }
    removed = 0
    for path in sorted(blobs.root.glob("??/*")):
        uri = blob_uri(path.name)
        if _SHA.fullmatch(path.name) and uri not in used and release(db, blobs, uri):
            removed += 1
    blobs.usage.recount()  # the tree was walked anyway: whatever drift the total had goes
    return removed
