"""Clusters of a collection's embeddings: the groups the model found without labels.

The vectors are read through the store layer and L2-normalised. Two methods, seeded, so one
seed gives one answer (scikit-learn does the fitting):

- **spectral** (the default up to `minibatch_above` points): spectral clustering of the graph
  that joins each image to its `graph_neighbors` nearest (cosine), the eigenvectors found by
  LOBPCG and turned into clusters by column-pivoted QR, which needs no restarts. It follows the
  neighbourhoods a k-NN classifier votes with, so a group may have any shape on the sphere. If
  the graph falls apart into more pieces than clusters asked for, the neighbours are doubled
  until it does not (the result says how many were used). Cost: the neighbour graph is
  computed exactly, growing with the square of the points.
- **kmeans**: spherical k-means (k-means on unit vectors): `KMeans` with `n_init` restarts, or
  `MiniBatchKMeans` above `minibatch_above` points (what `auto` runs there).

Why spectral first: DINO's embeddings are spread over the sphere (its KoLeo-style spreading, and
classes that are not round blobs), where k-means finds many partitions of almost the same
inertia that disagree. Measured on the demo scenes (bench/RESULTS.md): k-means' NMI moved from
0.44 to 0.80 between seeds on one backbone, and more restarts did not fix it; the neighbour
graph gave 0.67–0.88 on both backbones at 2,000 and 10,000 points, the same for every seed.

Automatic k: each k in [k_min, k_max] is fitted on one seeded sample of the points (at most
`k_sample`) with the same method and scored by the mean silhouette (cosine) of that sample; the
best score wins (ties: the smaller k), then the method runs on every point with it. The
silhouette favours compact, well-separated groups and needs no labels; on data without such
groups it tends to the small end of the range, so give k when you know about how many groups
you want.

Every cluster's centre is the normalised mean of its members; members are ordered by cosine to
it. Where points carry labels, each cluster reports its majority label and purity (its share of
the cluster's labelled points), and the whole its purity and NMI against the labels.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans, MiniBatchKMeans, SpectralClustering
from sklearn.metrics import normalized_mutual_info_score, silhouette_score
from sklearn.neighbors import kneighbors_graph

from core.settings import DiscoverySettings
from core.store import Store

Progress = Callable[[str, int, int], None]  # (phase, done, total)
FIELDS = ("uri", "label", "sha256")
METHODS = ("auto", "spectral", "kmeans")


class NotEnoughPoints(ValueError):
    """Fewer points than clusters asked for (or than automatic k needs)."""


class Stopped(RuntimeError):
    """The job was asked to stop (the service is shutting down)."""


@dataclass(frozen=True)
class ClusterParams:
    """What a clustering is asked for; with the collection's content, the cache key.

    Args:
        k: the number of clusters; None chooses it in [k_min, k_max] (see the module docstring).
        k_min, k_max: the range automatic k searches (k_max also capped at points / 5).
        seed: the seed of the fitting (k-means' initialisation, the eigensolver's start) and
            of the silhouette's sample.
        method: "spectral", "kmeans", or "auto": spectral up to `Tuning.minibatch_above`
            points, MiniBatchKMeans above (see the module docstring).
    Raises:
        ValueError: an unknown method.
    """

    k: int | None = None
    k_min: int = 2
    k_max: int = 20
    seed: int = 0
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tuning:
    """How the fitting runs (DINOSERVE_DISCOVERY__*): not part of what is asked, but of the
    answer, so part of the cache key too."""

    minibatch_above: int = 20_000
    k_sample: int = 4000
    nearest: int = 12
    k_cap: int = 50  # automatic k tries at most this
    graph_neighbors: int = 10  # spectral: each point's nearest neighbours in the graph

    @classmethod
    def of(cls, d: DiscoverySettings) -> Tuning:
        """The tuning the settings ask for (one place, so the service and the CLI agree)."""
        return cls(d.minibatch_above, d.k_sample, d.nearest, d.k_max, d.graph_neighbors)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Embeddings:
    """A collection's points as read for clustering: ids, uris, labels, unit vectors (N, D)."""

    ids: list[str]
    uris: list[str | None]
    labels: list[str | None]
    vectors: np.ndarray
    fingerprint: str


def _digest(rows: list[tuple[str, str, str]]) -> str:
    h = hashlib.sha256()
    for pid, sha, label in sorted(rows):
        h.update(f"{pid}\t{sha}\t{label}\n".encode())
    return h.hexdigest()[:32]


def _row(p: Any) -> tuple[str, str, str]:
    label = p.payload.get("label")
    return p.id, str(p.payload.get("sha256") or ""), "" if label is None else f"={label}"


def fingerprint(db: Store, physical: str) -> str:
    """A digest of what a clustering's answer depends on: every point's id, content hash and
    label (a change to any of them is a changed collection). Reads payloads only."""
    return _digest([_row(p) for p in db.iter_points(physical, ["sha256", "label"])])


def read_embeddings(
    db: Store, physical: str, progress: Progress | None = None, page: int = 2048
) -> Embeddings:
    """Every point of `physical` with its vector, L2-normalised, and the fingerprint of what was
    read (the same as `fingerprint` gives for an unchanged collection)."""
    total = db.count(physical)
    # One (N, D) array filled in place: a list of row arrays stacked at the end would hold the
    # vectors twice at the peak.
    x = np.empty((total, db.dim(physical)), np.float32)
    ids, uris, labels, rows = [], [], [], []
    for p in db.iter_points(physical, FIELDS, page=page, vectors=True):
        if p.vector is None:
            continue
        if len(ids) == len(x):  # points added while reading
            x = np.concatenate([x, np.empty_like(x[: max(1, len(x) // 4)])])
        x[len(ids)] = p.vector
        ids.append(p.id)
        uris.append(p.payload.get("uri"))
        labels.append(p.payload.get("label"))
        rows.append(_row(p))
        if progress and len(ids) % page == 0:
            progress("reading", len(ids), total)
    x = x[: len(ids)]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return Embeddings(ids, uris, labels, x, _digest(rows))


def _kmeans(k: int, n: int, seed: int, minibatch_above: int) -> KMeans | MiniBatchKMeans:
    if n > minibatch_above:
        # Batches of a few thousand points: full k-means' cost per iteration is all N × k.
        return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=max(2048, 8 * k))
    return KMeans(k, random_state=seed, n_init=4)


def neighbour_graph(x: np.ndarray, neighbors: int, pieces: int) -> tuple[csr_matrix, int]:
    """The symmetric k-NN affinity of unit vectors `x`, in at most `pieces` connected pieces.

    Returns (affinity, neighbours used): `neighbors`, doubled until the graph has no more
    connected pieces than `pieces` (a cluster cannot span two of them), at most n − 1.
    """
    n = len(x)
    nn = max(1, min(neighbors, n - 1))
    while True:
        # Euclidean order on unit vectors is cosine order.
        g = kneighbors_graph(x, nn, include_self=True)
        affinity = (0.5 * (g + g.T)).tocsr()
        found, _ = connected_components(affinity, directed=False)
        if found <= pieces or nn >= n - 1:
            return affinity, nn
        nn = min(2 * nn, n - 1)


def resolve_method(method: str, n: int, minibatch_above: int) -> str:
    """What `auto` means for `n` points: spectral up to `minibatch_above`, k-means above."""
    if method == "auto":
        return "spectral" if n <= minibatch_above else "kmeans"
    return method


def fit(x: np.ndarray, k: int, seed: int, method: str, tuning: Tuning) -> tuple[np.ndarray, dict]:
    """Cluster unit vectors into k groups; (each point's cluster, how it was fitted)."""
    n = len(x)
    if resolve_method(method, n, tuning.minibatch_above) == "spectral" and 1 < k < n:
        affinity, nn = neighbour_graph(x, tuning.graph_neighbors, k)
        model = SpectralClustering(
            k,
            affinity="precomputed",
            eigen_solver="lobpcg",  # ARPACK took 4–50× longer for the same clusters
            assign_labels="cluster_qr",
            random_state=seed,
        )
        with warnings.catch_warnings():
            # A graph in up to k pieces is expected (well-separated groups): each is a cluster.
            warnings.filterwarnings("ignore", "Graph is not fully connected")
            assigned = model.fit_predict(affinity)
        return assigned, {
            "algorithm": "SpectralClustering",
            "graph_neighbors": nn,
        }
    model = _kmeans(k, n, seed, tuning.minibatch_above)
    return model.fit_predict(x), {"algorithm": type(model).__name__}


def choose_k(
    x: np.ndarray,
    k_min: int,
    k_max: int,
    seed: int,
    tuning: Tuning,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    method: str = "kmeans",
) -> tuple[int, dict[int, float]]:
    """The k in [k_min, k_max] with the best silhouette on a seeded sample; (k, k → score)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    sample = x[np.sort(rng.choice(n, tuning.k_sample, replace=False))] if n > tuning.k_sample else x
    scores: dict[int, float] = {}
    ks = list(range(k_min, k_max + 1))
    for i, k in enumerate(ks):
        if should_stop and should_stop():
            raise Stopped("stopped while choosing k")
        assigned, _ = fit(sample, k, seed, method, tuning)
        if len(set(assigned.tolist())) < 2:
            scores[k] = -1.0  # everything in one cluster: no silhouette, never the best
        else:
            scores[k] = float(silhouette_score(sample, assigned, metric="cosine"))
        if progress:
            progress("choosing k", i + 1, len(ks))
    best = max(ks, key=lambda k: (scores[k], -k))
    return best, scores


def k_range(params: ClusterParams, n: int, k_cap: int) -> tuple[int, int]:
    """The k automatic choice tries for `n` points: [k_min, min(k_max, k_cap, n / 5)].

    Raises:
        NotEnoughPoints: not even k_min clusters of 5 points each on average.
    """
    hi = min(params.k_max, k_cap, n // 5)
    if hi < max(params.k_min, 2):
        raise NotEnoughPoints(
            f"no k to try in {params.k_min}..{params.k_max} for {n} points: automatic k tries "
            f"at most points / 5 and {k_cap} (DINOSERVE_DISCOVERY__K_MAX); give k"
        )
    return max(params.k_min, 2), hi


def _label_stats(labels: list[str | None]) -> dict[str, Any]:
    counts = Counter(label for label in labels if label is not None)
    labelled = sum(counts.values())
    majority, top = counts.most_common(1)[0] if counts else (None, 0)
    return {
        "labelled": labelled,
        "majority_label": majority,
        "purity": top / labelled if labelled else None,
        "labels": dict(counts.most_common(5)),
    }


def cluster(
    emb: Embeddings,
    params: ClusterParams,
    tuning: Tuning = Tuning(),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Cluster `emb` (see the module docstring). Clusters are numbered by size, largest first.

    Returns:
        `k`, how it was chosen (and the silhouette per k tried), the algorithm, points,
        labelled points, overall `purity` and `nmi` (None without labels), and `clusters`: each
        with `cluster`, `size`, label statistics, `nearest` (the images nearest its centre:
        id, uri, label, similarity), and `members`/`similarity` (every member, nearest first).

    Raises:
        NotEnoughPoints: fewer points than k (or too few to choose k).
    """
    x, n = emb.vectors, len(emb.ids)
    scores: dict[int, float] = {}
    if params.k is None:
        lo, hi = k_range(params, n, tuning.k_cap)
        # The sample is fitted with the method the whole will get, not the one its size picks.
        method = resolve_method(params.method, n, tuning.minibatch_above)
        k, scores = choose_k(x, lo, hi, params.seed, tuning, progress, should_stop, method)
    else:
        k = params.k
        if n < k:
            raise NotEnoughPoints(f"{n} points cannot make {k} clusters")
    if should_stop and should_stop():
        raise Stopped("stopped before clustering")
    if progress:
        progress("clustering", 0, 1)
    assigned, how = fit(x, k, params.seed, params.method, tuning)
    sums = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(sums, assigned, x)
    centres = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(
        x.dtype
    )
    # Each point's cosine to its centre, in chunks: (chunk, k) at a time, never a copy of x.
    sims = (
        np.concatenate(
            [
                np.take_along_axis(x[i : i + 8192] @ centres.T, assigned[i : i + 8192, None], 1)[
                    :, 0
                ]
                for i in range(0, n, 8192)
            ]
        )
        if n
        else np.zeros(0, np.float32)
    )
    sizes = np.bincount(assigned, minlength=k)
    # Renumbered largest first; a cluster no point fell into (spectral can leave one) is left out.
    order = sorted((c for c in range(k) if sizes[c]), key=lambda c: (-sizes[c], c))
    clusters = []
    for number, c in enumerate(order):
        idx = np.flatnonzero(assigned == c)
        idx = idx[np.argsort(-sims[idx], kind="stable")]
        nearest = [
            {
                "id": emb.ids[i],
                "uri": emb.uris[i],
                "label": emb.labels[i],
                "similarity": round(float(sims[i]), 4),
            }
            for i in idx[: tuning.nearest]
        ]
        clusters.append(
            {
                "cluster": number,
                "size": len(idx),
                **_label_stats([emb.labels[i] for i in idx]),
                "nearest": nearest,
                "members": [emb.ids[i] for i in idx],
                "similarity": [round(float(s), 4) for s in sims[idx]],
            }
        )
    renumber = np.full(k, -1)
    renumber[order] = np.arange(len(order))
    labelled = [i for i, label in enumerate(emb.labels) if label is not None]
    truth = [emb.labels[i] for i in labelled]
    found = renumber[assigned[labelled]] if labelled else []
    purity = nmi = None
    if labelled:
        majority = sum(
            Counter(t for t, f in zip(truth, found, strict=True) if f == c).most_common(1)[0][1]
            for c in set(found.tolist())
        )
        purity = majority / len(labelled)
        nmi = float(normalized_mutual_info_score(truth, found))
    return {
        "k": k,
        "k_chosen_by": "given" if params.k is not None else "silhouette",
        "silhouette": {str(kk): round(v, 4) for kk, v in scores.items()} or None,
        **how,
        "points": n,
        "labelled": len(labelled),
        "purity": purity,
        "nmi": nmi,
        "clusters": clusters,
    }
