"""One store interface over both backends (embedded Qdrant Edge, a Qdrant server or cluster).

A backend implements the primitives (`_…` methods); `Store` adds the layout's logic (aliases,
the `<alias>__<version>` collections, idempotent upserts) and the one retry policy: transient
failures only, exponential back-off, then `StoreError`. Every user of Qdrant in the project goes
through this class; nothing else imports a Qdrant library.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from core.store.layout import (
    SEP,
    Layout,
    Match,
    Point,
    StoreError,
    UnknownCollection,
    check_name,
    physical_name,
    version_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at call time, so tests can record the back-off instead


@dataclass(frozen=True)
class RetryPolicy:
    """How often a call is tried before it fails: a batch job waits out a server restart
    (`BATCH`), a request handler answers 503 quickly (`REQUEST`)."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0


BATCH = RetryPolicy()
REQUEST = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.5)


class Store(ABC):
    """A Qdrant store (see the module docstring). Thread-safe: the service, its refresh worker
    and the indexer's writer thread share one."""

    def __init__(self, layout: Layout, policy: RetryPolicy = BATCH) -> None:
        self.layout, self.policy = layout, policy
        # physical → writes made through this store (shared with `with_policy` copies): lets a
        # cache of results computed from a collection tell that it changed
        # (discovery/duplicates.py).
        self._writes: dict[str, int] = {}

    # -- what a backend provides ------------------------------------------------------------
    location: str  # for messages: the path or URL

    @abstractmethod
    def _collections(self) -> list[str]: ...
    @abstractmethod
    def _aliases(self) -> dict[str, str]: ...
    @abstractmethod
    def _exists(self, physical: str) -> bool: ...
    @abstractmethod
    def _dim(self, physical: str) -> int: ...
    @abstractmethod
    def _create(self, physical: str, dim: int) -> None: ...
    @abstractmethod
    def _drop(self, physical: str) -> None: ...
    @abstractmethod
    def _change_aliases(self, changes: dict[str, str | None]) -> None:
        """Point each alias at a collection, or delete it (None), all in one atomic step."""

    @abstractmethod
    def _upsert(
        self, physical: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]
    ) -> None: ...
    @abstractmethod
    def _retrieve(
        self, physical: str, ids: list[str], fields: Sequence[str] | None, vectors: bool
    ) -> list[Point]: ...
    @abstractmethod
    def _search(
        self, physical: str, vector: list[float], k: int, match: Match, fields: Sequence[str]
    ) -> list[Point]: ...
    def _search_many(
        self,
        physical: str,
        vectors: list[list[float]],
        k: int,
        match: Match,
        fields: Sequence[str],
        ef: int,
    ) -> list[list[Point]]:
        """One search per vector (at the layout's ef); a backend that can plan them as one
        batch overrides this."""
        return [self._search(physical, v, k, match, fields) for v in vectors]

    @abstractmethod
    def _scroll(
        self, physical: str, fields: Sequence[str] | None, offset: Any, limit: int, vectors: bool
    ) -> tuple[list[Point], Any]: ...
    @abstractmethod
    def _count(self, physical: str, match: Match) -> int: ...
    @abstractmethod
    def _facet(self, physical: str, key: str, limit: int) -> dict[str, int]:
        """Value → number of points, for the most frequent `limit` values of a keyword field."""

    @abstractmethod
    def _delete(self, physical: str, ids: list[str]) -> None: ...
    @abstractmethod
    def _set_payload(self, physical: str, ids: list[str], payload: dict[str, Any]) -> None: ...
    @abstractmethod
    def _optimize(
        self, physical: str, points: int, on_wait: Callable[[float], None] | None = None
    ) -> None: ...
    def _segment_due(self, physical: str, written: int) -> bool:
        """After `written` more points: is a segment's worth waiting for its index? (A server
        indexes by itself: never.)"""
        return False

    def building(self, physical: str) -> float | None:
        """Seconds the search index of `physical` has been building, None when it is not."""
        return None

    @abstractmethod
    def _transient(self, exc: BaseException) -> bool:
        """True for failures worth retrying (a server restarting, a timeout)."""

    @abstractmethod
    def _translate(self, exc: BaseException) -> StoreError:
        """The backend's exception as a StoreError (StoreFull for a full disk)."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the retry policy -------------------------------------------------------------------
    def with_policy(self, policy: RetryPolicy) -> Store:
        """The same store (same connection or open shards) retried by `policy`."""
        other = copy.copy(self)
        other.policy = policy
        return other

    def call(self, fn: Callable[[], T]) -> T:
        """Run one backend call under the retry policy; failures end as StoreError."""
        p = self.policy
        retrying = Retrying(
            stop=stop_after_attempt(p.attempts),
            wait=wait_exponential(multiplier=p.base_delay_s, max=p.max_delay_s),
            retry=retry_if_exception(self._transient),
            sleep=_sleep,
            before_sleep=lambda s: log.warning(
                "Qdrant at %s: %s; retrying (attempt %d of %d)",
                self.location,
                s.outcome.exception() if s.outcome else "?",
                s.attempt_number,
                p.attempts,
            ),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (StoreError, UnknownCollection, ValueError):
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _wrote(self, physical: str) -> None:
        self._writes[physical] = self._writes.get(physical, 0) + 1

    def writes(self, physical: str) -> int:
        """How many writes (upserts, deletes, payload changes, drops) this process has made to
        `physical` since it opened the store: a change means the collection may differ."""
        return self._writes.get(physical, 0)

    # -- collections and aliases ------------------------------------------------------------
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""
        self.call(self._collections)

    def collections(self) -> list[str]:
        """Every physical collection, sorted."""
        return sorted(self.call(self._collections))

    def aliases(self) -> dict[str, str]:
        """Every alias → the physical collection it points to."""
        return dict(self.call(self._aliases))

    def exists(self, physical: str) -> bool:
        return self.call(lambda: self._exists(physical))

    def dim(self, physical: str) -> int:
        return self.call(lambda: self._dim(physical))

    def resolve_alias(self, alias: str) -> str | None:
        """The physical collection an alias points to, or None."""
        return self.aliases().get(alias)

    def resolve(self, name: str) -> str:
        """Alias → physical name; a physical name passes through.

        Raises:
            UnknownCollection: neither exists.
        """
        target = self.resolve_alias(name)
        if target is not None:
            return target
        if self.exists(name):
            return name
        raise UnknownCollection(f"no collection named {name!r}")

    def ensure_collection(self, name: str, model_version: str, dim: int) -> str:
        """Create `<name>__<version>` if missing (cosine, `dim`, label index); return its name.

        Raises:
            ValueError: it exists with vectors of another size.
        """
        return self.create_physical(physical_name(name, model_version), dim)

    def create_physical(self, physical: str, dim: int) -> str:
        """`ensure_collection` by physical name."""
        if not self.exists(physical):
            try:
                self.call(lambda: self._create(physical, dim))
            except StoreError:
                # N shard workers start together and race to create it: losing is fine.
                if not self.exists(physical):
                    raise
        size = self.dim(physical)
        if size != dim:
            raise ValueError(f"{physical} holds {size}-d vectors, the model gives {dim}-d")
        return physical

    def point_alias(self, alias: str, physical: str) -> None:
        """Make `alias` point to `physical` in one atomic step."""
        self.flip({alias: physical})

    def flip(self, targets: dict[str, str]) -> None:
        """Point every alias of `targets` (alias → physical) at its collection in ONE atomic
        step, so no reader sees some collections moved and others not."""
        if targets:
            self.call(lambda: self._change_aliases(dict(targets)))

    def drop_alias(self, alias: str) -> None:
        self.call(lambda: self._change_aliases({alias: None}))

    def delete_collections(self, names: list[str]) -> list[str]:
        """Drop physical collections, never one an alias points to; returns those dropped."""
        live = set(self.aliases().values())
        dropped = [n for n in names if n not in live and self.exists(n)]
        for name in dropped:
            try:
                self.call(lambda n=name: self._drop(n))
            finally:
                self._wrote(name)
        return dropped

    def listing(self) -> list[dict[str, Any]]:
        """Every physical collection: its logical name, the alias pointing at it (None for a
        version kept for rollback), its model version and its point count."""
        by_physical = {p: a for a, p in self.aliases().items()}
        rows = []
        for physical in self.collections():
            logical, _, version = physical.partition(SEP)
            row = {
                "name": logical,
                "alias": by_physical.get(physical),
                "physical": physical,
                "model_version": version or None,
                "points": self.count(physical),
            }
            rows.append(row)
        return rows

    def delete_logical(self, name: str) -> list[str]:
        """Delete the alias `name` and every physical collection of it (`name__<version>`, old
        versions included); returns the physical names deleted.

        Raises:
            UnknownCollection: no alias and no physical collection of that name.
        """
        check_name(name)
        physical = [p for p in self.collections() if p.partition(SEP)[0] == name]
        if self.resolve_alias(name) is not None:
            self.drop_alias(name)
        elif not physical:
            raise UnknownCollection(f"no collection named {name!r}")
        return self.delete_collections(physical)

    def collections_of_version(self, version: str) -> dict[str, str]:
        """The aliases that point to `<alias>__<version>`: the collections a version serves."""
        return {a: p for a, p in self.aliases().items() if p == f"{a}{SEP}{version}"}

    def physical_by_version(self) -> dict[str, list[str]]:
        """Model version → its physical collections."""
        out: dict[str, list[str]] = {}
        for name in self.collections():
            version = version_of(name)
            if version is not None:
                out.setdefault(version, []).append(name)
        return out

    # -- points -----------------------------------------------------------------------------
    def upsert(
        self,
        physical: str,
        ids: list[str],
        vectors: np.ndarray,
        payloads: list[dict],
        index_segments: bool = True,
    ) -> None:
        """Write points (same id → replaced). `vectors` is (N, D) float32.

        Args:
            index_segments: a bulk writer (indexing, refresh, migration) waits here while a
                segment's worth of what it wrote is indexed; a request handler passes False and
                leaves that to the next indexing run (its write must not wait a minute).
        """
        if ids:
            vecs = np.asarray(vectors, dtype=np.float32)
            try:
                self.call(lambda: self._upsert(physical, ids, vecs, payloads))
            finally:  # a failed write may still have written some of it
                self._wrote(physical)
            if index_segments and self._segment_due(physical, len(ids)):
                # Index what was written so far as a segment of its own: the build's memory
                # stays that of one segment, however large the collection grows.
                self.optimize(physical)

    def retrieve(
        self,
        physical: str,
        ids: list[str],
        fields: Sequence[str] | None = None,
        vectors: bool = False,
    ) -> list[Point]:
        """The points of `ids` that exist (payload `fields`, all when None)."""
        if not ids:
            return []
        return self.call(lambda: self._retrieve(physical, ids, fields, vectors))

    def point(
        self, physical: str, pid: str, fields: Sequence[str] | None = None, vector: bool = False
    ) -> Point | None:
        found = self.retrieve(physical, [pid], fields, vector)
        return found[0] if found else None

    def existing_hashes(self, physical: str, ids: list[str]) -> dict[str, str]:
        """sha256 payloads of those of `ids` that exist."""
        return {p.id: p.payload.get("sha256", "") for p in self.retrieve(physical, ids, ["sha256"])}

    def _ef(self, match: Match) -> int:
        """The HNSW search breadth for a search with `match`: wider with a label filter, which
        cuts most of the graph's links (`Layout.filtered_hnsw_ef`)."""
        return self.layout.filtered_hnsw_ef if match.label is not None else self.layout.hnsw_ef

    def search(
        self,
        physical: str,
        vector: Sequence[float],
        k: int,
        match: Match | None = None,
        fields: Sequence[str] = ("uri", "label"),
    ) -> list[Point]:
        """The k nearest points by cosine similarity, best first."""
        vec = [float(x) for x in vector]
        return self.call(lambda: self._search(physical, vec, k, match or Match(), fields))

    def search_many(
        self,
        physical: str,
        vectors: np.ndarray,
        k: int,
        match: Match | None = None,
        fields: Sequence[str] = (),
        ef: int | None = None,
    ) -> list[list[Point]]:
        """`search` for each row of `vectors` (N, D), as one batched call where the backend has
        one (Qdrant Edge's `query_batch`, a server's `query_batch_points`): one list of the k
        nearest points per row, in order. `ef`: the HNSW search breadth, when the caller needs
        less than the layout's (e.g. only the very nearest, as the duplicates finder does)."""
        if len(vectors) == 0:
            return []
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        match = match or Match()
        breadth = ef or self._ef(match)
        return self.call(lambda: self._search_many(physical, rows, k, match, fields, breadth))

    def scroll(
        self,
        physical: str,
        fields: Sequence[str] | None = None,
        offset: Any = None,
        limit: int = 1024,
        vectors: bool = False,
    ) -> tuple[list[Point], Any]:
        """One page of points and the offset of the next (None after the last)."""
        return self.call(lambda: self._scroll(physical, fields, offset, limit, vectors))

    def iter_points(
        self,
        physical: str,
        fields: Sequence[str] | None = None,
        page: int = 1024,
        vectors: bool = False,
    ) -> Iterator[Point]:
        """Every point, page by page."""
        offset: Any = None
        while True:
            points, offset = self.scroll(physical, fields, offset, page, vectors)
            yield from points
            if offset is None:
                return

    def count(self, physical: str, match: Match | None = None) -> int:
        return self.call(lambda: self._count(physical, match or Match()))

    def facet(self, physical: str, key: str = "label", limit: int = 1000) -> dict[str, int]:
        """Exact counts of the `limit` most frequent values of an indexed keyword field (the
        labels of a collection), most frequent first."""
        counts = self.call(lambda: self._facet(physical, key, limit))
        # Edge keeps a value whose last point was relabelled, with count 0: not a label.
        return dict(
            sorted(((v, n) for v, n in counts.items() if n > 0), key=lambda kv: (-kv[1], kv[0]))
        )

    def delete_points(self, physical: str, ids: list[str]) -> None:
        if ids:
            try:
                self.call(lambda: self._delete(physical, ids))
            finally:
                self._wrote(physical)

    def set_payload(self, physical: str, ids: list[str], payload: dict[str, Any]) -> None:
        """Set (merge) payload keys of existing points."""
        if ids:
            try:
                self.call(lambda: self._set_payload(physical, ids, payload))
            finally:
                self._wrote(physical)

    def optimize(self, physical: str, on_wait: Callable[[float], None] | None = None) -> None:
        """Build the search index now (and, past `Layout.quantize_above` points, move vectors
        to disk with an int8 copy in RAM), so that queries right after are fast. Searches are
        exact until then, and always find every point.

        Args:
            on_wait: called about twice a second with the seconds elapsed while a large index
                builds (a progress display).
        """
        points = self.count(physical)
        self.call(lambda: self._optimize(physical, points, on_wait))
