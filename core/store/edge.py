"""The embedded store: Qdrant Edge (the Qdrant engine in-process), one Edge shard per physical
collection under `<path>/collections/`, aliases in `<path>/aliases.json`.

Layout of `<path>`:
    dinoserve-store.json   marks the directory as a dinoserve Edge store (format, Edge version)
    aliases.json           {"aliases": {alias: physical}}, replaced atomically
    collections/<name>/    one Edge shard (its own WAL, segments, HNSW, payload index)
    dinoserve.lock         held (flock) by the one process that has the store open

An alias flip is one `os.replace` of aliases.json (written and fsynced first), so a crash leaves
either the old or the new aliases. A collection is created in a hidden folder and renamed into
place, and dropped by renaming it out first, so a crash never leaves half a collection.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from core.store.base import BATCH, RetryPolicy, Store
from core.store.edge_build import build_apart
from core.store.edge_config import ShardSpec, edge_config
from core.store.layout import (
    IndexBuilding,
    Layout,
    Match,
    Point,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreUnusable,
)

log = logging.getLogger(__name__)
MARKER = "dinoserve-store.json"
ALIASES = "aliases.json"
COLLECTIONS = "collections"
LOCK = "dinoserve.lock"
FORMAT = "qdrant-edge/1"
EDGE_VERSION = dist_version("qdrant-edge-py")
_FULL = ("No space left", "os error 28", "disk is full", "ENOSPC")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return any(s in str(exc) for s in _FULL)


class EdgeStore(Store):
    """See the module docstring.

    Args:
        path: the store directory (created when missing; a local-mode directory of the previous
            version is migrated in place, its files kept under `local-mode-backup/`).
        layout: index and quantisation parameters.
        policy: retries (Edge has no transient failures; kept for the interface).
    Raises:
        StoreUnusable: another process has it open, or it is not a dinoserve store.
    """

    def __init__(self, path: Path | str, layout: Layout, policy: RetryPolicy = BATCH) -> None:
        super().__init__(layout, policy)
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.RLock()  # the shard table and aliases.json
        self._shards: dict[str, qe.EdgeShard] = {}
        self._building: dict[str, float] = {}  # physical → monotonic start of its index build
        self._unindexed: dict[str, int] = {}  # physical → points written since its last build
        self._lockfile = self._take_lock()
        try:
            self._open_layout()
        except BaseException:
            self._release_lock()
            raise

    # -- opening ----------------------------------------------------------------------------
    def _take_lock(self) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+")  # noqa: SIM115 (held open while the store is)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreLocked(
                f"the embedded store {self.path} is in use by {holder}; only one process can "
                "open it (a running `dinoserve serve` owns it: send it work through its admin "
                "API, or stop it first)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        return f

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None

    def _open_layout(self) -> None:
        from core.store.migrate import is_local_mode, migrate_local_mode

        marker = self.path / MARKER
        if marker.is_file():
            try:
                fmt = json.loads(marker.read_text()).get("format")
            except (OSError, ValueError) as exc:
                raise StoreUnusable(f"{marker} is unreadable ({exc})") from exc
            if fmt != FORMAT:
                raise StoreUnusable(f"{self.path} holds a store of format {fmt!r}, not {FORMAT}")
            self._read_aliases()
            return
        if is_local_mode(self.path):
            self._init_layout(fresh=True)
            migrate_local_mode(self.path, self)
            self._mark()
            return
        others = [p.name for p in self.path.iterdir() if p.name != LOCK]
        if others:
            raise StoreUnusable(
                f"{self.path} is not a dinoserve store (it holds {', '.join(sorted(others)[:5])}"
                f"{' …' if len(others) > 5 else ''}); set DINOSERVE_QDRANT_PATH to an empty or "
                "dinoserve directory"
            )
        self._init_layout(fresh=True)
        self._mark()

    def _init_layout(self, fresh: bool) -> None:
        cols = self.path / COLLECTIONS
        if fresh and cols.exists():  # the leftovers of an interrupted migration
            shutil.rmtree(cols)
        cols.mkdir(exist_ok=True)
        write_atomic(self.path / ALIASES, json.dumps({"aliases": {}}).encode())
        self._aliases_cache: dict[str, str] = {}

    def _mark(self) -> None:
        meta = {"format": FORMAT, "edge": EDGE_VERSION}
        write_atomic(self.path / MARKER, json.dumps(meta).encode())

    def _read_aliases(self) -> None:
        try:
            data = json.loads((self.path / ALIASES).read_text())
            self._aliases_cache = dict(data["aliases"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreUnusable(f"{self.path / ALIASES} is unreadable ({exc})") from exc

    def _dir(self, physical: str) -> Path:
        return self.path / COLLECTIONS / physical

    def _spec(self, dim: int, large: bool) -> ShardSpec:
        return ShardSpec(dim, large, self.layout.segment_mib(dim) if large else 0)

    def _shard(self, physical: str) -> qe.EdgeShard:
        with self._lock:
            shard = self._shards.get(physical)
            if shard is not None:
                return shard
            since = self._building.get(physical)
            if since is not None:
                raise IndexBuilding(
                    f"the collection {physical!r} is building its search index (for "
                    f"{time.monotonic() - since:.0f} s so far); try again shortly"
                )
            d = self._dir(physical)
            if not d.is_dir():
                raise StoreError(f"no collection {physical!r} in {self.path}")
            try:
                # A large collection is loaded in its serving form explicitly: the index
                # builder leaves its own (nothing pinned in RAM) on disk.
                large = self._quantized(physical)
                config = edge_config(self._spec(self._dim(physical), True)) if large else None
                shard = qe.EdgeShard.load(str(d), config)
            except Exception as exc:
                raise StoreUnusable(f"the collection {d} cannot be opened: {exc}") from exc
            if large:
                warm(d)
            self._shards[physical] = shard
            return shard

    # -- primitives -------------------------------------------------------------------------
    def _collections(self) -> list[str]:
        cols = self.path / COLLECTIONS
        return [p.name for p in cols.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases_cache)

    def _exists(self, physical: str) -> bool:
        return self._dir(physical).is_dir()

    def _dim(self, physical: str) -> int:
        try:
            cfg = json.loads((self._dir(physical) / "edge_config.json").read_text())
            return int(cfg["vectors"][""]["size"])
        except (OSError, ValueError, KeyError) as exc:
            raise StoreUnusable(f"{self._dir(physical)}: unreadable configuration ({exc})") from exc

    def _quantized(self, physical: str) -> bool:
        cfg = json.loads((self._dir(physical) / "edge_config.json").read_text())
        return bool(cfg.get("quantization_config") or cfg["vectors"][""].get("quantization_config"))

    def _create(self, physical: str, dim: int) -> None:
        with self._lock:
            final = self._dir(physical)
            if final.exists():
                return
            self._check_space()
            tmp = final.with_name(f".new-{physical}-{uuid.uuid4().hex[:8]}")
            shard = qe.EdgeShard.create(str(tmp), edge_config(self._spec(dim, large=False)))
            try:
                shard.update(
                    qe.UpdateOperation.create_field_index("label", qe.PayloadSchemaType.Keyword)
                )
                shard.flush()
            finally:
                shard.close()
            os.rename(tmp, final)  # the collection appears whole or not at all

    def _drop(self, physical: str) -> None:
        with self._lock:
            shard = self._shards.pop(physical, None)
            if shard is not None:
                shard.close()
            d = self._dir(physical)
            if d.exists():
                trash = d.with_name(f".drop-{physical}-{uuid.uuid4().hex[:8]}")
                os.rename(d, trash)
                shutil.rmtree(trash, ignore_errors=True)

    def _change_aliases(self, changes: dict[str, str | None]) -> None:
        with self._lock:
            new = dict(self._aliases_cache)
            for alias, physical in changes.items():
                if physical is None:
                    new.pop(alias, None)
                elif not self._exists(physical):
                    raise StoreError(f"cannot point {alias!r} at {physical!r}: no such collection")
                else:
                    new[alias] = physical
            write_atomic(self.path / ALIASES, json.dumps({"aliases": new}, indent=1).encode())
            # In place: copies made by `with_policy` share this dict (and the lock), so the
            # service's request store sees a flip its refresh worker made.
            self._aliases_cache.clear()
            self._aliases_cache.update(new)

    def _check_space(self, needed: int = 0) -> None:
        """Refuse a write while the disk is (nearly) full: Edge writes through memory maps, and
        a page fault on a full disk is a SIGBUS that kills the process, not an error."""
        free = shutil.disk_usage(self.path).free
        if free < self.layout.min_free_bytes + needed:
            mib = (self.layout.min_free_bytes + needed) / 2**20
            raise StoreFull(
                f"the disk under the embedded store {self.path} is full ({free / 2**20:.0f} MiB "
                f"free, writes need {mib:.0f} MiB: DINOSERVE_QDRANT__MIN_FREE_MB plus the "
                "write): free space there and run the command again (what is stored stays "
                "readable)"
            )

    def _upsert(
        self, physical: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]
    ) -> None:
        self._check_space(4 * vectors.nbytes)
        points = [
            qe.Point(pid, vec, payload)
            for pid, vec, payload in zip(ids, vectors.tolist(), payloads, strict=True)
        ]
        self._shard(physical).update(qe.UpdateOperation.upsert_points(points))

    def _retrieve(
        self, physical: str, ids: list[str], fields: Sequence[str] | None, vectors: bool
    ) -> list[Point]:
        records = self._shard(physical).retrieve(
            ids, with_payload=True if fields is None else list(fields), with_vector=vectors
        )
        return [_point(r) for r in records]

    def _request(
        self,
        vector: list[float],
        k: int,
        match: Match,
        fields: Sequence[str],
        ef: int | None = None,
    ) -> qe.QueryRequest:
        quant = qe.QuantizationSearchParams(rescore=True, oversampling=self.layout.oversampling)
        return qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vector),
            filter=_filter(match),
            with_payload=list(fields),
            params=qe.SearchParams(hnsw_ef=ef or self._ef(match), quantization=quant),
        )

    def _search(
        self, physical: str, vector: list[float], k: int, match: Match, fields: Sequence[str]
    ) -> list[Point]:
        request = self._request(vector, k, match, fields)
        return [_point(r) for r in self._shard(physical).query(request)]

    def _search_many(
        self,
        physical: str,
        vectors: list[list[float]],
        k: int,
        match: Match,
        fields: Sequence[str],
        ef: int,
    ) -> list[list[Point]]:
        # One planned batch: its searches share a pass over the segments.
        batch = qe.QueryBatchRequest([self._request(v, k, match, fields, ef) for v in vectors])
        return [[_point(r) for r in hits] for hits in self._shard(physical).query_batch(batch)]

    def _scroll(
        self, physical: str, fields: Sequence[str] | None, offset: Any, limit: int, vectors: bool
    ) -> tuple[list[Point], Any]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            with_vector=vectors,
            with_payload=True if fields is None else list(fields),
        )
        records, nxt = self._shard(physical).scroll(request)
        return [_point(r) for r in records], nxt

    def _count(self, physical: str, match: Match) -> int:
        return self._shard(physical).count(qe.CountRequest(exact=True, filter=_filter(match)))

    def _facet(self, physical: str, key: str, limit: int) -> dict[str, int]:
        response = self._shard(physical).facet(qe.FacetRequest(key, limit=limit, exact=True))
        return {str(h.value): int(h.count) for h in response.hits}

    def _delete(self, physical: str, ids: list[str]) -> None:
        self._check_space()
        self._shard(physical).update(qe.UpdateOperation.delete_points(list(ids)))

    def _set_payload(self, physical: str, ids: list[str], payload: dict[str, Any]) -> None:
        self._check_space()
        self._shard(physical).update(qe.UpdateOperation.set_payload(list(ids), payload))

    def _optimize(
        self, physical: str, points: int, on_wait: Callable[[float], None] | None = None
    ) -> None:
        # Optimising rewrites segments one at a time, none larger than 1.5 × segment_points:
        # room for a second copy of the largest.
        dim = self._dim(physical)
        self._check_space(2 * min(points, 3 * self.layout.segment_points // 2) * dim * 4)
        large = points >= self.layout.quantize_above or self._quantized(physical)
        spec = self._spec(dim, large)
        if points < self.layout.build_apart_above:
            with self._lock:
                if large and not self._quantized(physical):
                    # Reopen with vectors on disk and an int8 copy in RAM; optimize() rewrites
                    # the segments in that form.
                    shard = self._shards.pop(physical, None)
                    if shard is not None:
                        shard.close()
                    self._shards[physical] = qe.EdgeShard.load(
                        str(self._dir(physical)), edge_config(spec)
                    )
                shard = self._shard(physical)
            log.info("building the search index of %s (%d points)", physical, points)
            shard.optimize()  # holds the GIL, but only for a second or two at this size
            shard.flush()
            self._unindexed[physical] = 0
            return
        with self._lock:
            if physical in self._building:
                raise IndexBuilding(f"the search index of {physical!r} is being built already")
            shard = self._shards.pop(physical, None)
            if shard is not None:
                shard.close()  # Edge lets one process at a time hold a shard
            self._building[physical] = time.monotonic()
        log.info("building the search index of %s (%d points) in a child process", physical, points)
        try:
            peak = build_apart(self._dir(physical), spec, on_wait)
        finally:
            with self._lock:
                self._building.pop(physical, None)
        self._unindexed[physical] = 0
        log.info("built the search index of %s (builder peak %.0f MiB)", physical, peak)

    def _segment_due(self, physical: str, written: int) -> bool:
        with self._lock:
            before = self._unindexed.get(physical)
            if before is None:  # first write since the store opened: what is not indexed yet
                info = self._shard(physical).info()
                before = max(0, info.points_count - info.indexed_vectors_count - written)
            self._unindexed[physical] = n = before + written
        return n >= self.layout.segment_points

    def building(self, physical: str) -> float | None:
        with self._lock:
            since = self._building.get(physical)
        return None if since is None else time.monotonic() - since

    def _transient(self, exc: BaseException) -> bool:
        return False  # in-process: a failure now fails the same way on a retry

    def _translate(self, exc: BaseException) -> StoreError:
        if _is_full(exc):
            return StoreFull(
                f"the disk under the embedded store {self.path} is full: free space there and run "
                "the command again (what is stored stays readable)"
            )
        return StoreError(f"embedded store {self.path}: {exc}")

    def flush(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.flush()

    def close(self) -> None:
        with self._lock:
            shards, self._shards = self._shards, {}
            for name, shard in shards.items():
                try:
                    shard.flush()
                except Exception as exc:  # a full disk must not keep the others from closing
                    log.warning("flushing %s failed: %s", name, exc)
                shard.close()
            self._release_lock()


# What every search of a large collection reads: the int8 copies and the HNSW graphs (the full
# vectors are read only for the few candidates rescored). Names as Qdrant Edge 0.9 writes them.
_HOT = ("segments/*/vector_storage/quantized.data", "segments/*/vector_index/*.bin")


def warm(shard_dir: Path) -> int:
    """Read a large shard's hot files once, so that they are in the page cache; returns bytes.

    Edge maps them and faults them in as searches touch them, and closing a shard drops them
    from the cache: at 1M points the first ten searches after an open took 90–440 ms each
    (118,000 major page faults, 460 MiB read at random), against 5–20 ms after this
    sequential read (0.5 s from disk; bench/RESULTS.md, "store at a million")."""
    buf, n = bytearray(8 << 20), 0
    for pattern in _HOT:
        for f in shard_dir.glob(pattern):
            try:
                with open(f, "rb", buffering=0) as fh:
                    while k := fh.readinto(buf):
                        n += k
            except OSError as exc:  # a file an optimiser just replaced: searches read it anyway
                log.debug("warming %s: %s", f, exc)
    return n


def _point(r: Any) -> Point:
    return Point(
        str(r.id),
        dict(r.payload or {}),
        list(r.vector) if isinstance(r.vector, list) else None,
        float(getattr(r, "score", 0.0) or 0.0),
    )


def _filter(match: Match) -> qe.Filter | None:
    must: list[Any] = []
    must_not: list[Any] = []
    if match.label is not None:
        must.append(qe.FieldCondition(key="label", match=qe.MatchValue(match.label)))
    if match.labelled_only:
        must_not.append(qe.IsEmptyCondition("label"))
    if match.exclude is not None:
        must_not.append(qe.HasIdCondition({match.exclude}))
    if match.uri is not None:
        must.append(qe.FieldCondition(key="uri", match=qe.MatchValue(match.uri)))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)
