"""The blob store's size: a running total of its bytes, kept in `<blob_dir>/.usage`.

Uploads must not fill the volume (DINOSERVE_BLOB_MAX_BYTES), and summing the tree on every add
would cost a stat per stored image. So the total is a number in a file beside the blobs, changed
under an exclusive lock (`flock`, plus a process lock: threads of one process share it) by
whoever writes or removes a blob: replicas and worker processes sharing the volume count
together, and the total survives restarts. An add reserves its bytes before it writes them
(all of a request's at once, so a refused add writes nothing) and gives back what it did not
write (bytes already there).

The file is advisory, not a journal: missing or unreadable (first start, a torn write), it is
rebuilt by summing the tree once; `models gc`'s sweep, which walks the tree anyway, recounts it.
A crash between a reservation and its write leaves the total a little high (the safe side).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LEDGER = ".usage"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_LOCK = threading.Lock()  # flock excludes open files; this, the threads of this process


class BlobStoreFull(Exception):
    """Storing these bytes would take the blob store past DINOSERVE_BLOB_MAX_BYTES: nothing of
    the request was written, what is stored stays as it is (507 from the API)."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def tree_bytes(root: Path) -> int:
    """The bytes of every blob under `root` (`??/<sha256>`; temporary and hidden files not)."""
    total = 0
    for path in root.glob("??/*"):
        if _SHA.fullmatch(path.name):
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # removed meanwhile
                continue
    return total


class Usage:
    """The running total of one blob directory.

    Args:
        root: DINOSERVE_BLOB_DIR.
        max_bytes: DINOSERVE_BLOB_MAX_BYTES (None: counted, never refused).
    """

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root, self.max_bytes = Path(root), max_bytes

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The ledger's file descriptor, held exclusively."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _LOCK:
            fd = os.open(self.root / LEDGER, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def _read(self, fd: int) -> int:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else tree_bytes(self.root)

    @staticmethod
    def _write(fd: int, total: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{max(total, 0)}\n".encode(), 0)

    def total(self) -> int:
        """The bytes the store holds now, by the ledger."""
        with self._locked() as fd:
            total = self._read(fd)
            self._write(fd, total)  # rebuilt if it was missing
            return total

    def change(self, delta: int, limit: bool = True) -> None:
        """Add `delta` bytes (negative: removed) to the total.

        Args:
            delta: bytes written (> 0, reserved before the write) or removed (< 0).
            limit: refuse growth past max_bytes (False: bytes a point names already, which
                must be written whatever the total).

        Raises:
            BlobStoreFull: the total would pass max_bytes (nothing changed).
        """
        with self._locked() as fd:
            total = self._read(fd)
            over = self.max_bytes is not None and total + delta > self.max_bytes
            if limit and delta > 0 and over:
                raise BlobStoreFull(
                    f"the store of uploaded images is full: {_size(total)} of "
                    f"{_size(self.max_bytes or 0)} (DINOSERVE_BLOB_MAX_BYTES) used, "
                    f"{_size(delta)} more asked; delete images or raise the limit"
                )
            self._write(fd, total + delta)

    def recount(self) -> int:
        """Sum the tree again and keep that as the total (after a sweep); returns it."""
        with self._locked() as fd:
            total = tree_bytes(self.root)
            self._write(fd, total)
            return total
