"""The store as request handlers use it: every call in a worker thread (the event loop never
waits on Qdrant), retried by the store's quick request policy (then 503), and the check that a
collection holds embeddings of the model version a request runs with."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from core import store
from core.store import Match, Point, Store
from discovery.duplicates import DuplicateCache

T = TypeVar("T")
HIT_FIELDS = ("uri", "label")


class VersionMismatch(Exception):
    """The collection holds embeddings of another model version than the request's (409)."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    uri: str | None
    label: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "uri": self.uri, "label": self.label}


def query_id(image: str) -> str:
    """A point id from what a client names an indexed image by: its id, or its source URI."""
    try:
        return str(uuid.UUID(image))
    except ValueError:
        return store.point_id(image)


class Vectors:
    """The app's store (opened with `store.REQUEST` retries), called off the event loop."""

    def __init__(self, db: Store) -> None:
        self.db = db
        self.duplicate_cache = DuplicateCache()  # near-duplicate groups, paged by requests

    async def duplicates(
        self, physical: str, threshold: float, k: int, offset: int, limit: int
    ) -> dict[str, Any]:
        """One page of the near-duplicate groups of `physical` (computed once per collection
        state and threshold, in a worker thread; discovery.duplicates). A page, not the whole
        result: with worker processes it crosses the engine socket."""
        found = await self.run(lambda: self.duplicate_cache.get(self.db, physical, threshold, k))
        return found.page(offset, limit)

    async def run(self, fn: Callable[[], T]) -> T:
        return await run_in_threadpool(fn)

    async def aliases(self) -> dict[str, str]:
        """Every alias → its physical collection."""
        return await self.run(self.db.aliases)

    async def ping(self) -> None:
        """Raise StoreError unless Qdrant answers."""
        await self.run(self.db.ping)

    async def physical(self, name: str, version: str | None) -> str:
        """The physical collection to search for logical `name` with model `version`.

        `<name>__<version>` when it exists — whether or not the alias points to it yet (a
        refresh flips aliases and swaps engines at slightly different moments; each request
        keeps to its own version) — else whatever the alias points to, which must then be of
        `version`. `version=None`: the alias target, unchecked.

        Raises:
            UnknownCollection: no such collection (→ 404).
            VersionMismatch: it holds another model version's embeddings.
        """
        expected = f"{name}{store.SEP}{version}"

        def resolve() -> str:
            target = self.db.resolve_alias(name)
            if version is None or target == expected:
                return target or self.db.resolve(name)
            if self.db.exists(expected):
                return expected
            return target or self.db.resolve(name)

        physical = await self.run(resolve)
        if version is not None and physical != expected:
            held = store.version_of(physical) or "unknown"
            raise VersionMismatch(
                f"collection {name!r} holds embeddings of model version {held}, this service "
                f"runs {version}: re-index it with this model (dinoserve index) "
                "before querying it"
            )
        return physical

    async def point(self, physical: str, pid: str, with_vector: bool = False) -> Point | None:
        """One point (payload `uri`, `label`, `sha256`, optionally its vector), or None."""
        fields = [*HIT_FIELDS, "sha256"]
        return await self.run(lambda: self.db.point(physical, pid, fields, with_vector))

    async def nearest(
        self,
        physical: str,
        vector: list[float],
        k: int,
        label: str | None = None,
        labelled_only: bool = False,
        exclude: str | None = None,
    ) -> list[Hit]:
        """The k nearest points by cosine similarity.

        Args:
            label: only points with this label.
            labelled_only: only points that have a label (the k-NN vote's memory).
            exclude: a point id to leave out (the query itself).
        """
        match = Match(label, labelled_only, exclude)
        points = await self.run(lambda: self.db.search(physical, vector, k, match, HIT_FIELDS))
        return [Hit(p.id, p.score, p.payload.get("uri"), p.payload.get("label")) for p in points]
