"""Near-duplicate images of one collection: connected components of its thresholded k-NN graph.

Every point's vector is read once (a scroll, page by page) and each page is sent back to the
store as one batch of k-NN queries (`Store.search_many`); an edge joins two points whose cosine
similarity is at least the threshold, and the groups are the connected components of those
edges (scipy). So the cost is n queries of top-k, about linear in the collection, never all
pairs; memory holds the ids and the edges, not the vectors. A group of more than k copies of one
image still joins up: each copy links to k others, and they to the rest.

`DuplicateCache` keeps results per (physical collection, threshold, k, point count, writes),
so paging through them does not compute them again, and any write made through the store
(`Store.writes`) or a change of the point count makes the next call compute afresh.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.store import Store

FIELDS = ("uri", "label")
TOLERANCE = 1e-6  # float rounding: an exact copy scores 0.99999994, still "≥ 1.0"
# HNSW search breadth of the finder's queries: near-copies are a point's very nearest
# neighbours, which a narrow search finds as well as the layout's 128 for general search, at
# 2.3× the speed (30k points: 592/600 planted copies found at ef 16, 32, 64 and 128 alike;
# 0.34 vs 0.77 ms a query; bench/RESULTS.md, "Near-duplicates at 100k").
MIN_EF = 32


def search_ef(k: int) -> int:
    """The finder's HNSW breadth for k neighbours: at least MIN_EF, and twice what it keeps."""
    return max(MIN_EF, 2 * (k + 1))


@dataclass(frozen=True)
class Member:
    """One image of a group; `similarity`: cosine similarity to the group's centre."""

    id: str
    uri: str | None
    label: str | None
    similarity: float


@dataclass(frozen=True)
class Group:
    """Near-duplicates, the centre first (the member most similar to all others), then by
    similarity to it. `min_similarity`: the least similar member to the centre; `min_edge`:
    the weakest link that joined the group (≥ the threshold)."""

    members: list[Member]
    min_similarity: float
    min_edge: float

    @property
    def size(self) -> int:
        return len(self.members)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of a group (the HTTP answer's and the CLI's)."""
        return {
            "size": self.size,
            "min_similarity": round(self.min_similarity, 6),
            "min_edge": round(self.min_edge, 6),
            "members": [
                {"id": m.id, "uri": m.uri, "label": m.label, "similarity": round(m.similarity, 6)}
                for m in self.members
            ],
        }


@dataclass(frozen=True)
class Duplicates:
    """The groups of a collection at one threshold, largest first."""

    physical: str
    threshold: float
    k: int
    points: int  # points scanned
    groups: list[Group]
    seconds: float

    @property
    def duplicated(self) -> int:
        """Images that belong to some group."""
        return sum(g.size for g in self.groups)

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        """The JSON of groups `offset` to `offset + limit`, with what they were computed from."""
        return {
            "threshold": self.threshold,
            "k": self.k,
            "points": self.points,
            "duplicated": self.duplicated,
            "total_groups": len(self.groups),
            "offset": offset,
            "limit": limit,
            "seconds": round(self.seconds, 3),
            "groups": [g.as_dict() for g in self.groups[offset : offset + limit]],
        }


Progress = Callable[[int, int], None]  # (points done, points in all)


def find_duplicates(
    db: Store,
    physical: str,
    threshold: float,
    k: int = 10,
    batch: int = 256,
    progress: Progress | None = None,
) -> Duplicates:
    """Groups of near-duplicate images of a physical collection.

    Args:
        db: the store.
        physical: the physical collection (`<name>__<version>`).
        threshold: least cosine similarity of an edge, in (0, 1].
        k: neighbours asked per point (more finds larger groups in one hop, costs more).
        batch: points per scroll page and per batch of k-NN queries.
        progress: called after each batch with (points done, points in all).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    t0 = time.perf_counter()
    total = db.count(physical)
    index: dict[str, int] = {}  # point id → node
    payloads: dict[int, dict] = {}  # node → uri, label (of the points scanned)
    rows: list[int] = []
    cols: list[int] = []
    sims: list[float] = []
    offset = None
    while True:
        points, offset = db.scroll(physical, FIELDS, offset, batch, vectors=True)
        points = [p for p in points if p.vector is not None]
        if points:
            vectors = np.asarray([p.vector for p in points], dtype=np.float32)
            # k + 1: the point itself comes back too.
            hits = db.search_many(physical, vectors, k + 1, fields=(), ef=search_ef(k))
            for p, near in zip(points, hits, strict=True):
                i = index.setdefault(p.id, len(index))
                payloads[i] = p.payload
                for h in near:
                    if h.id != p.id and h.score >= threshold - TOLERANCE:
                        rows.append(i)
                        cols.append(index.setdefault(h.id, len(index)))
                        sims.append(h.score)
        if progress is not None:
            progress(len(payloads), max(total, len(payloads)))
        if offset is None:
            break
    groups = _groups(db, physical, index, payloads, rows, cols, sims)
    return Duplicates(physical, threshold, k, len(payloads), groups, time.perf_counter() - t0)


def _groups(
    db: Store,
    physical: str,
    index: dict[str, int],
    payloads: dict[int, dict],
    rows: list[int],
    cols: list[int],
    sims: list[float],
) -> list[Group]:
    n = len(index)
    r, c, s = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(sims, np.float64)
    # A neighbour written after the scroll passed it has no payload here: leave it out.
    scanned = np.zeros(n, bool)
    scanned[list(payloads)] = True
    keep = scanned[r] & scanned[c]
    r, c, s = r[keep], c[keep], s[keep]
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=True, connection="weak")
    component[~scanned] = -1
    sizes = np.bincount(component[scanned], minlength=int(component.max(initial=0)) + 1)
    weakest = np.full(len(sizes), np.inf)
    np.minimum.at(weakest, component[r], s)
    ids = np.empty(n, dtype=object)
    for pid, i in index.items():
        ids[i] = pid
    in_group = np.flatnonzero(scanned & (sizes[np.maximum(component, 0)] >= 2))
    vectors = _vectors(db, physical, ids[in_group].tolist())
    by_component = in_group[np.argsort(component[in_group], kind="stable")]
    bounds = np.flatnonzero(np.diff(component[by_component])) + 1
    out = []
    for nodes in np.split(by_component, bounds) if len(by_component) else []:
        members = [(ids[i], payloads[i]) for i in nodes.tolist() if ids[i] in vectors]
        if len(members) >= 2:  # fewer: deleted meanwhile
            out.append(_group(members, vectors, weakest[component[nodes[0]]]))
    out.sort(key=lambda g: (-g.size, -g.min_similarity, g.members[0].id))
    return out


def _vectors(db: Store, physical: str, ids: list[str], chunk: int = 1024) -> dict[str, np.ndarray]:
    """Unit vectors of `ids` (those that still exist)."""
    out = {}
    for start in range(0, len(ids), chunk):
        for p in db.retrieve(physical, ids[start : start + chunk], fields=[], vectors=True):
            if p.vector:
                v = np.asarray(p.vector, np.float32)
                out[p.id] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def _group(
    members: list[tuple[str, dict]], vectors: dict[str, np.ndarray], min_edge: float
) -> Group:
    x = np.stack([vectors[pid] for pid, _ in members])  # (m, D)
    # The centre: the member with the highest summed similarity to all members, O(m·D).
    centre = int(np.argmax(x @ x.sum(axis=0)))
    to_centre = np.clip(x @ x[centre], -1.0, 1.0)
    order = sorted(range(len(members)), key=lambda j: (j != centre, -to_centre[j], members[j][0]))
    return Group(
        [
            Member(
                members[j][0],
                members[j][1].get("uri"),
                members[j][1].get("label"),
                float(to_centre[j]),
            )
            for j in order
        ],
        float(to_centre.min()),
        float(min_edge),
    )


class DuplicateCache:
    """The last `size` results, keyed by what they depend on (see the module docstring).

    One computation at a time: a second request for the same key waits for the first instead
    of repeating it (and two scans never compete for the cores)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._results: OrderedDict[tuple, Duplicates] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, db: Store, physical: str, threshold: float, k: int) -> Duplicates:
        """The cached result, or a fresh one (blocking: call it from a worker thread)."""
        with self._lock:
            # Read before computing: a write during the scan changes the key for the next call.
            key = (physical, round(threshold, 6), k, db.count(physical), db.writes(physical))
            hit = self._results.get(key)
            if hit is not None:
                self._results.move_to_end(key)
                return hit
            result = find_duplicates(db, physical, threshold, k)
            self._results[key] = result
            while len(self._results) > self.size:
                self._results.popitem(last=False)
            return result
