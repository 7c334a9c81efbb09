"""A Qdrant server or cluster through qdrant-client (`DINOSERVE_QDRANT_URL`). Also serves as the
stand-in for a server in tests (`QdrantClient(location=":memory:")`) and as the reader of the
previous version's local-mode directory during its migration."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core.store.base import BATCH, RetryPolicy, Store
from core.store.layout import Layout, Match, Point, StoreError, StoreFull


class ServerStore(Store):
    """See the module docstring.

    Args:
        client: a qdrant-client connected to a server (or an in-memory / local-mode client).
        location: the URL (or path) for messages.
    """

    def __init__(
        self, client: QdrantClient, location: str, layout: Layout, policy: RetryPolicy = BATCH
    ) -> None:
        super().__init__(layout, policy)
        self.client, self.location = client, location

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None,
        layout: Layout,
        timeout_s: float = 30.0,
        policy: RetryPolicy = BATCH,
    ) -> ServerStore:
        # No version check at construction: it is a network call that blocks start-up while
        # the server is down; /readyz reports reachability instead.
        client = QdrantClient(
            url=url, api_key=api_key, timeout=int(timeout_s), check_compatibility=False
        )
        return cls(client, url, layout, policy)

    def _collections(self) -> list[str]:
        return [c.name for c in self.client.get_collections().collections]

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _exists(self, physical: str) -> bool:
        return self.client.collection_exists(physical)

    def _dim(self, physical: str) -> int:
        params = self.client.get_collection(physical).config.params.vectors
        assert isinstance(params, qm.VectorParams)
        return params.size

    def _create(self, physical: str, dim: int) -> None:
        lay = self.layout
        try:
            self.client.create_collection(
                physical,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
                shard_number=lay.shard_number,
                replication_factor=lay.replication_factor,
                write_consistency_factor=lay.write_consistency_factor,
            )
        except ValueError as exc:  # the in-process client's "already exists"
            raise StoreError(str(exc)) from exc
        with warnings.catch_warnings():  # the in-process client warns that it has no indexes
            warnings.simplefilter("ignore")
            self.client.create_payload_index(physical, "label", qm.PayloadSchemaType.KEYWORD)

    def _drop(self, physical: str) -> None:
        self.client.delete_collection(physical)

    def _change_aliases(self, changes: dict[str, str | None]) -> None:
        existing = self._aliases()
        ops: list[Any] = []
        for alias, physical in changes.items():
            if alias in existing:
                ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
            if physical is not None:
                ops.append(
                    qm.CreateAliasOperation(
                        create_alias=qm.CreateAlias(collection_name=physical, alias_name=alias)
                    )
                )
        if ops:  # one call: the server applies the list atomically
            self.client.update_collection_aliases(change_aliases_operations=ops)

    def _upsert(
        self, physical: str, ids: list[str], vectors: np.ndarray, payloads: list[dict]
    ) -> None:
        batch = qm.Batch(ids=list(ids), vectors=vectors.tolist(), payloads=payloads)
        self.client.upsert(physical, points=batch, wait=True)

    def _retrieve(
        self, physical: str, ids: list[str], fields: Sequence[str] | None, vectors: bool
    ) -> list[Point]:
        records = self.client.retrieve(
            physical,
            ids=ids,
            with_payload=True if fields is None else list(fields),
            with_vectors=vectors,
        )
        return [_point(r) for r in records]

    def _search(
        self, physical: str, vector: list[float], k: int, match: Match, fields: Sequence[str]
    ) -> list[Point]:
        quant = qm.QuantizationSearchParams(rescore=True, oversampling=self.layout.oversampling)
        response = self.client.query_points(
            physical,
            query=vector,
            limit=k,
            query_filter=_filter(match),
            with_payload=list(fields),
            search_params=qm.SearchParams(hnsw_ef=self._ef(match), quantization=quant),
        )
        return [_point(p) for p in response.points]

    def _search_many(
        self,
        physical: str,
        vectors: list[list[float]],
        k: int,
        match: Match,
        fields: Sequence[str],
        ef: int,
    ) -> list[list[Point]]:
        quant = qm.QuantizationSearchParams(rescore=True, oversampling=self.layout.oversampling)
        params = qm.SearchParams(hnsw_ef=ef, quantization=quant)
        flt = _filter(match)
        requests = [
            qm.QueryRequest(query=v, limit=k, filter=flt, with_payload=list(fields), params=params)
            for v in vectors
        ]  # one round trip for the batch
        responses = self.client.query_batch_points(physical, requests=requests)
        return [[_point(p) for p in r.points] for r in responses]

    def _scroll(
        self, physical: str, fields: Sequence[str] | None, offset: Any, limit: int, vectors: bool
    ) -> tuple[list[Point], Any]:
        records, nxt = self.client.scroll(
            physical,
            limit=limit,
            offset=offset,
            with_vectors=vectors,
            with_payload=True if fields is None else list(fields),
        )
        return [_point(r) for r in records], nxt

    def _count(self, physical: str, match: Match) -> int:
        return self.client.count(physical, count_filter=_filter(match), exact=True).count

    def _facet(self, physical: str, key: str, limit: int) -> dict[str, int]:
        response = self.client.facet(physical, key, limit=limit, exact=True)
        return {str(h.value): int(h.count) for h in response.hits}

    def _delete(self, physical: str, ids: list[str]) -> None:
        self.client.delete(physical, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def _set_payload(self, physical: str, ids: list[str], payload: dict[str, Any]) -> None:
        self.client.set_payload(physical, payload=payload, points=list(ids), wait=True)

    def _optimize(
        self, physical: str, points: int, on_wait: Callable[[float], None] | None = None
    ) -> None:
        # A server builds its HNSW index in the background by itself; what is left is the move
        # of a large collection's vectors to disk with an int8 copy in RAM.
        info = self.client.get_collection(physical)
        if points >= self.layout.quantize_above and info.config.quantization_config is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.client.update_collection(
                    physical,
                    vectors_config={"": qm.VectorParamsDiff(on_disk=True)},
                    quantization_config=qm.ScalarQuantization(
                        scalar=qm.ScalarQuantizationConfig(
                            type=qm.ScalarType.INT8, quantile=0.99, always_ram=True
                        )
                    ),
                )

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError):
            return True
        return isinstance(exc, UnexpectedResponse) and (exc.status_code or 500) >= 500

    def _translate(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if "No space left" in text or "disk is full" in text:
            return StoreFull(f"Qdrant at {self.location} is out of disk space: {text}")
        if isinstance(exc, UnexpectedResponse) and (exc.status_code or 500) < 500:
            return StoreError(f"Qdrant at {self.location} refused the request: {text}")
        return StoreError(f"Qdrant at {self.location} failed: {text}")

    def close(self) -> None:
        self.client.close()


def _point(r: Any) -> Point:
    vec = r.vector if isinstance(r.vector, list) else None
    return Point(str(r.id), dict(r.payload or {}), vec, float(getattr(r, "score", 0.0) or 0.0))


def _filter(match: Match) -> qm.Filter | None:
    must: list[Any] = []
    must_not: list[Any] = []
    if match.label is not None:
        must.append(qm.FieldCondition(key="label", match=qm.MatchValue(value=match.label)))
    if match.labelled_only:
        must_not.append(qm.IsEmptyCondition(is_empty=qm.PayloadField(key="label")))
    if match.exclude is not None:
        must_not.append(qm.HasIdCondition(has_id=[match.exclude]))
    if match.uri is not None:
        must.append(qm.FieldCondition(key="uri", match=qm.MatchValue(value=match.uri)))
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)
