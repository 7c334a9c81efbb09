"""The Qdrant layout shared by the indexer and the API (see DESIGN.md "Qdrant layout").

A logical collection `photos` is an alias to the physical collection `photos__<model version>`;
point ids are UUIDv5 of the source URI; payload `uri, label, sha256, width, height,
model_version, indexed_at` with an index on `label`. The same code runs against the embedded
store (`QdrantClient(path=…)`) and a server or cluster (`url=…`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

log = logging.getLogger(__name__)
T = TypeVar("T")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
SEP = "__"


class UnknownCollection(LookupError):
    """No collection or alias of that name."""


class StoreError(RuntimeError):
    """Qdrant refused or could not be reached (after retries)."""


def point_id(uri: str) -> str:
    """UUIDv5 of the source URI: the same image always lands on the same point."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, uri))


def check_name(name: str) -> str:
    """Collection names: letters, digits, `-` and `_`, no `__` (it separates the model version)."""
    if not NAME_RE.fullmatch(name) or SEP in name:  # fullmatch: `$` admits a final "\n"
        raise ValueError(
            f"invalid collection name {name!r}: use 1–63 letters, digits, '-' or '_' "
            "(no '__'), starting with a letter or digit"
        )
    return name


def physical_name(name: str, model_version: str) -> str:
    return f"{check_name(name)}{SEP}{model_version}"


def open_client(
    path: Path | str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> QdrantClient:
    """A server/cluster client when `url` is set, else the embedded store at `path`."""
    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
    if path is None or str(path) == ":memory:":
        return QdrantClient(location=":memory:")
    Path(path).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(path))


def is_local(client: QdrantClient) -> bool:
    """True for the embedded store (where cluster settings and payload indexes do not apply)."""
    return type(client._client).__name__ == "QdrantLocal"


def with_retry(fn: Callable[[], T], attempts: int = 5, base_delay: float = 0.5) -> T:
    """Run a Qdrant call, retrying transient failures (server restarts) with back-off."""
    for attempt in range(attempts):
        try:
            return fn()
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            if attempt == attempts - 1:
                raise StoreError(f"Qdrant unreachable after {attempts} attempts: {exc}") from exc
            delay = base_delay * 2**attempt
            log.warning("Qdrant call failed (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise StoreError(f"Qdrant refused the request: {exc}") from exc
            if attempt == attempts - 1:
                raise StoreError(f"Qdrant failed after {attempts} attempts: {exc}") from exc
            time.sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


def resolve_alias(client: QdrantClient, alias: str, attempts: int = 5) -> str | None:
    """The physical collection an alias points to, or None."""
    for a in with_retry(lambda: client.get_aliases(), attempts).aliases:
        if a.alias_name == alias:
            return a.collection_name
    return None


def resolve_collection(client: QdrantClient, name: str, attempts: int = 5) -> str:
    """Alias → physical name; a physical name passes through. Raises UnknownCollection.

    Args:
        attempts: tries per Qdrant call (a request handler wants few, a batch job many).
    """
    target = resolve_alias(client, name, attempts)
    if target is not None:
        return target
    if with_retry(lambda: client.collection_exists(name), attempts):
        return name
    raise UnknownCollection(f"no collection named {name!r}")


def ensure_collection(
    client: QdrantClient,
    name: str,
    model_version: str,
    dim: int,
    shard_number: int = 1,
    replication_factor: int = 1,
    write_consistency_factor: int = 1,
) -> str:
    """Create `<name>__<version>` if missing (cosine, `dim`), with the label index; return it.

    Cluster settings apply only on a server (the embedded store ignores them).
    """
    physical = physical_name(name, model_version)
    if with_retry(lambda: client.collection_exists(physical)):
        size = client.get_collection(physical).config.params.vectors.size
        if size != dim:
            raise ValueError(f"{physical} holds {size}-d vectors, the model gives {dim}-d")
        return physical
    kwargs: dict[str, Any] = {}
    if not is_local(client):
        kwargs = dict(
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )
    try:
        with_retry(
            lambda: client.create_collection(
                physical,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
                **kwargs,
            )
        )
    except (StoreError, ValueError):
        # N shard workers start together and race to create it: losing that race is fine.
        if not with_retry(lambda: client.collection_exists(physical)):
            raise
        return physical
    if not is_local(client):  # the embedded store has no payload indexes (and warns)
        with_retry(
            lambda: client.create_payload_index(physical, "label", qm.PayloadSchemaType.KEYWORD)
        )
    return physical


def point_alias(client: QdrantClient, alias: str, physical: str) -> None:
    """Make `alias` point to `physical` in one atomic call (delete + create together)."""
    ops: list[Any] = []
    if resolve_alias(client, alias) is not None:
        ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
    ops.append(
        qm.CreateAliasOperation(
            create_alias=qm.CreateAlias(collection_name=physical, alias_name=alias)
        )
    )
    with_retry(lambda: client.update_collection_aliases(change_aliases_operations=ops))


def existing_hashes(client: QdrantClient, collection: str, ids: list[str]) -> dict[str, str]:
    """sha256 payloads of those of `ids` that exist."""
    if not ids:
        return {}
    records = with_retry(
        lambda: client.retrieve(collection, ids=ids, with_payload=["sha256"], with_vectors=False)
    )
    return {str(r.id): (r.payload or {}).get("sha256", "") for r in records}


def upsert(client: QdrantClient, collection: str, points: list[qm.PointStruct]) -> None:
    if points:
        with_retry(lambda: client.upsert(collection, points=points, wait=True))


def iter_points(
    client: QdrantClient, collection: str, fields: list[str], page: int = 1024
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, payload subset) of every point, page by page."""
    offset = None
    while True:
        records, offset = with_retry(
            lambda o=offset: client.scroll(
                collection, limit=page, offset=o, with_payload=fields, with_vectors=False
            )
        )
        for r in records:
            yield str(r.id), r.payload or {}
        if offset is None:
            return


def delete_points(client: QdrantClient, collection: str, ids: list[str]) -> None:
    if ids:
        with_retry(
            lambda: client.delete(
                collection, points_selector=qm.PointIdsList(points=ids), wait=True
            )
        )


def list_collections(client: QdrantClient) -> list[dict[str, Any]]:
    """Every physical collection: its logical name, the alias pointing at it (None for a version
    kept for rollback), its model version and its point count."""
    aliases = {a.collection_name: a.alias_name for a in with_retry(client.get_aliases).aliases}
    rows = []
    for c in sorted(with_retry(client.get_collections).collections, key=lambda c: c.name):
        logical, _, version = c.name.partition(SEP)
        count = with_retry(lambda n=c.name: client.count(n, exact=True)).count
        rows.append({"name": logical, "alias": aliases.get(c.name), "physical": c.name,
                     "model_version": version or None, "points": count})  # fmt: skip
    return rows


def delete_collection(client: QdrantClient, name: str) -> list[str]:
    """Delete the alias `name` and every physical collection of it (`name__<version>`, old
    versions included). Returns the physical names deleted.

    Raises:
        UnknownCollection: no alias and no physical collection of that name.
    """
    check_name(name)
    physical = [c.name for c in with_retry(client.get_collections).collections
                if c.name.partition(SEP)[0] == name]  # fmt: skip
    if resolve_alias(client, name) is not None:
        op = qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=name))
        with_retry(lambda: client.update_collection_aliases(change_aliases_operations=[op]))
    elif not physical:
        raise UnknownCollection(f"no collection named {name!r}")
    for p in physical:
        with_retry(lambda p=p: client.delete_collection(p))
    return physical
