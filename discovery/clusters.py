"""Clusters of a collection's embeddings: the groups the model found without labels.

The vectors are read through the store layer and L2-normalised, so k-means on them is spherical
k-means up to the centres' norms (each point's distance to a centre ranks as its cosine would;
members are then ordered by cosine to the normalised centre). scikit-learn does the fitting:
`KMeans` with `n_init` restarts, or `MiniBatchKMeans` above a size; both seeded, so one seed
gives one answer.

Automatic k: each k in [k_min, k_max] is fitted on one seeded sample of the points (at most
`k_sample`) and scored by the mean silhouette (cosine) of that sample; the best score wins
(ties: the smaller k), then k-means runs on every point with it. The silhouette favours compact,
well-separated groups and needs no labels; on data without such groups it tends to the small
end of the range, so give k when you know about how many groups you want.

Where points carry labels, each cluster reports its majority label and purity (its share of the
cluster's labelled points), and the whole its purity and NMI against the labels.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from core.store import Store

Progress = Callable[[str, int, int], None]  # (phase, done, total)
FIELDS = ("uri", "label", "sha256")


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
        seed: the seed of k-means' initialisation and of the silhouette's sample.
    """

    k: int | None = None
    k_min: int = 2
    k_max: int = 20
    seed: int = 0

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


def _model(k: int, n: int, seed: int, minibatch_above: int) -> KMeans | MiniBatchKMeans:
    if n > minibatch_above:
        # Batches of a few thousand points: full k-means' cost per iteration is all N × k.
        return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=max(2048, 8 * k))
    return KMeans(k, random_state=seed, n_init=4)


def choose_k(
    x: np.ndarray,
    k_min: int,
    k_max: int,
    seed: int,
    tuning: Tuning,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
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
        assigned = _model(k, len(sample), seed, tuning.minibatch_above).fit_predict(sample)
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
        k, scores = choose_k(x, lo, hi, params.seed, tuning, progress, should_stop)
    else:
        k = params.k
        if n < k:
            raise NotEnoughPoints(f"{n} points cannot make {k} clusters")
    if should_stop and should_stop():
        raise Stopped("stopped before k-means")
    if progress:
        progress("clustering", 0, 1)
    model = _model(k, n, params.seed, tuning.minibatch_above)
    assigned = model.fit_predict(x)
    centres = model.cluster_centers_ / np.maximum(
        np.linalg.norm(model.cluster_centers_, axis=1, keepdims=True), 1e-12
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
    order = sorted(range(k), key=lambda c: (-sizes[c], c))  # renumbered: largest first
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
    renumber = np.empty(k, int)
    renumber[order] = np.arange(k)
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
        "algorithm": type(model).__name__,
        "points": n,
        "labelled": len(labelled),
        "purity": purity,
        "nmi": nmi,
        "clusters": clusters,
    }
