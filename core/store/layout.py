"""The Qdrant layout every backend shares (DESIGN.md "Qdrant layout"): collection names, the
`<alias>__<model version>` physical names, UUIDv5 point ids, and the store's errors."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
SEP = "__"
PAYLOAD_FIELDS = ("uri", "label", "sha256", "width", "height", "model_version", "indexed_at")


class StoreError(RuntimeError):
    """Qdrant refused a request, or could not be reached after the retries."""


class UnknownCollection(LookupError):
    """No collection or alias of that name."""


class StoreFull(StoreError):
    """The disk under the store is full: what is stored stays readable, writes fail."""


class IndexBuilding(StoreError):
    """A collection is closed while its search index builds in a child process (seconds to
    minutes); the rest of the store answers, and so does this collection once it is built."""


class StoreUnusable(StoreError):
    """The store path holds something that is not a readable dinoserve store (corrupt or foreign),
    or another process has it open."""


class StoreLocked(StoreUnusable):
    """Another process (a running service, say) has the embedded store open."""


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


def version_of(physical: str) -> str | None:
    """The model version part of a physical name (None for a name without one)."""
    _, sep, version = physical.partition(SEP)
    return version if sep else None


@dataclass(frozen=True)
class Point:
    """A stored point as read back: id, the requested payload fields, optionally its vector and,
    for search results, the cosine similarity."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    vector: list[float] | None = None
    score: float = 0.0


@dataclass(frozen=True)
class Match:
    """Which points a search or count considers.

    Args:
        label: only points with this label.
        labelled_only: only points that have a label (the k-NN vote's memory).
        exclude: a point id to leave out (the query itself).
        uri: only points whose payload `uri` is this (who uses an uploaded image's bytes).
    """

    label: str | None = None
    labelled_only: bool = False
    exclude: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class Layout:
    """How physical collections are created and indexed (from `QdrantSettings`).

    Args:
        shard_number, replication_factor, write_consistency_factor: a server's cluster layout
            (the embedded store has one shard and ignores them).
        quantize_above: from this many points on, vectors move to disk with an int8 copy in RAM
            (scalar quantisation, results rescored with the full vectors); below, all in RAM.
        hnsw_ef: search breadth of the HNSW graph (recall vs latency).
        filtered_hnsw_ef: the same for searches with a label filter (which cut graph links).
        oversampling: candidates fetched per result from the int8 copy before rescoring.
        segment_points: the embedded store indexes every this many points written as a segment
            of its own, so an index build's memory is that of one segment, not the collection.
        build_apart_above: from this many points on, the embedded store builds an index in a
            child process (Qdrant Edge holds the GIL while it builds).
        min_free_bytes: the embedded store refuses writes below this much free disk space.
    """

    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    quantize_above: int = 200_000
    hnsw_ef: int = 128
    filtered_hnsw_ef: int = 512
    oversampling: float = 2.0
    min_free_bytes: int = 256 * 1024 * 1024
    segment_points: int = 200_000
    build_apart_above: int = 20_000

    def segment_mib(self, dim: int) -> int:
        """The largest segment Qdrant may build or merge into: `segment_points` float vectors
        of `dim`, with room for a segment that filled past it while its build waited."""
        return max(1, int(1.5 * self.segment_points * dim * 4 / 2**20))
