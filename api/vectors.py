"""Qdrant as the API uses it: lookups that run in worker threads, few retries, and the check that
a collection holds embeddings of the served model version."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from core import store

T = TypeVar("T")
HIT_FIELDS = ["uri", "label"]


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
    """The Qdrant client of one app.

    Args:
        client: embedded store or server client.
        attempts: tries per Qdrant call before StoreError (→ 503).
    """

    def __init__(self, client: QdrantClient, attempts: int = 2) -> None:
        self.client, self.attempts = client, attempts
        # The embedded store is not thread-safe; a server client is. A refresh running in the
        # service takes the same lock for its own Qdrant calls.
        self.lock: Any = threading.Lock() if store.is_local(client) else nullcontext()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a Qdrant call in a worker thread (retried; one at a time on the embedded store)."""

        def call() -> T:
            with self.lock:
                return store.with_retry(fn, self.attempts, base_delay=0.1)

        return await run_in_threadpool(call)

    async def ping(self) -> None:
        """Raise StoreError unless Qdrant answers."""
        await self.run(self.client.get_collections)

    async def physical(self, name: str, version: str | None) -> str:
        """The physical collection to search for logical `name` with model `version`.

        `<name>__<version>` when it exists — whether or not the alias points to it yet (a
        refresh flips aliases and swaps engines at slightly different moments; each request
        keeps to its own version) — else whatever the alias points to, which must then be of
        `version`. `version=None`: the alias target, unchecked.

        Raises:
            UnknownCollection: no such collection (→ 404).
            ApiError: 409 when it holds another model version's embeddings.
        """
        expected = f"{name}{store.SEP}{version}"

        def resolve() -> str:
            with self.lock:
                target = store.resolve_alias(self.client, name, self.attempts)
                if version is None or target == expected:
                    return target or store.resolve_collection(self.client, name, self.attempts)
                if store.with_retry(lambda: self.client.collection_exists(expected), self.attempts):
                    return expected
                return target or store.resolve_collection(self.client, name, self.attempts)

        physical = await run_in_threadpool(resolve)
        if version is not None and physical != expected:
            held = physical.split(store.SEP, 1)[1] if store.SEP in physical else "unknown"
            raise ApiError(
                409,
                "model_version_mismatch",
                f"collection {name!r} holds embeddings of model version {held}, this service "
                f"runs {version}: re-index it with this model (dinoserve index) "
                "before querying it",
            )
        return physical

    async def point(self, physical: str, pid: str, with_vector: bool = False) -> qm.Record | None:
        """One point (payload `uri`, `label`, `sha256`, optionally its vector), or None."""
        records = await self.run(
            lambda: self.client.retrieve(
                physical, ids=[pid], with_payload=[*HIT_FIELDS, "sha256"], with_vectors=with_vector
            )
        )
        return records[0] if records else None

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
        must: list[Any] = []
        must_not: list[Any] = []
        if label is not None:
            must.append(qm.FieldCondition(key="label", match=qm.MatchValue(value=label)))
        if labelled_only:
            must_not.append(qm.IsEmptyCondition(is_empty=qm.PayloadField(key="label")))
        if exclude is not None:
            must_not.append(qm.HasIdCondition(has_id=[exclude]))
        flt = qm.Filter(must=must or None, must_not=must_not or None)
        response = await self.run(
            lambda: self.client.query_points(
                physical, query=vector, limit=k, query_filter=flt, with_payload=HIT_FIELDS
            )
        )
        return [
            Hit(str(p.id), float(p.score), (p.payload or {}).get("uri"),
                (p.payload or {}).get("label"))
            for p in response.points
        ]  # fmt: skip
