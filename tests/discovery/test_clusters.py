"""Clusters of stored embeddings (discovery/clusters.py) and their records on disk
(discovery/results.py), on small synthetic vector sets in the embedded store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import store
from discovery.clusters import (
    ClusterParams,
    NotEnoughPoints,
    Tuning,
    cluster,
    fingerprint,
    read_embeddings,
)
from discovery.results import ClusterResults, as_seen, cache_key, new_record, run_job
from tests.stores import edge_store

VERSION = "20260101-000000-test"


def blobs(n_per: int, centres: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """`centres` well-separated directions, `n_per` noisy points around each; (vectors, truth)."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:centres]  # orthonormal directions
    x = np.concatenate([a + spread * rng.normal(size=(n_per, dim)) for a in axes])
    truth = np.repeat(np.arange(centres), n_per)
    return x.astype(np.float32), truth


def fill(db, name: str, x: np.ndarray, labels: list[str | None]) -> str:
    physical = db.ensure_collection(name, VERSION, x.shape[1])
    uris = [f"/data/{i:05d}.png" for i in range(len(x))]
    payloads = [
        {"uri": u, "label": lab, "sha256": f"{i:064x}"}
        for i, (u, lab) in enumerate(zip(uris, labels, strict=True))
    ]
    db.upsert(physical, [store.point_id(u) for u in uris], x, payloads)
    db.point_alias(name, physical)
    return physical


@pytest.fixture
def db(tmp_path):
    s = edge_store(tmp_path / "q")
    yield s
    s.close()


def test_separated_clusters_are_recovered_with_purity_one(db):
    x, truth = blobs(30, 4)
    physical = fill(db, "blobs", x, [f"c{t}" for t in truth])
    emb = read_embeddings(db, physical)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1, atol=1e-5)
    out = cluster(emb, ClusterParams(k=4, seed=1), Tuning(nearest=5))
    assert out["k"] == 4 and out["k_chosen_by"] == "given" and out["points"] == 120
    assert out["purity"] == 1.0 and out["nmi"] == pytest.approx(1.0)
    assert [c["size"] for c in out["clusters"]] == [30, 30, 30, 30]
    for c in out["clusters"]:
        assert c["purity"] == 1.0 and c["labelled"] == 30
        assert len(c["nearest"]) == 5 and len(c["members"]) == 30
        sims = c["similarity"]
        assert sims == sorted(sims, reverse=True) and sims[0] > 0.9
        assert [n["id"] for n in c["nearest"]] == c["members"][:5]
        assert {n["label"] for n in c["nearest"]} == {c["majority_label"]}


def test_automatic_k_finds_the_number_of_groups(db):
    x, _ = blobs(25, 5, seed=3)
    physical = fill(db, "auto", x, [None] * len(x))
    out = cluster(read_embeddings(db, physical), ClusterParams(k_min=2, k_max=12, seed=0))
    assert out["k"] == 5 and out["k_chosen_by"] == "silhouette"
    assert set(out["silhouette"]) == {str(k) for k in range(2, 13)}
    # Without labels: no purity, no NMI, no majority label.
    assert out["purity"] is None and out["nmi"] is None and out["labelled"] == 0
    assert all(c["majority_label"] is None and c["purity"] is None for c in out["clusters"])


def test_same_seed_same_answer_and_minibatch_above_the_size(db):
    x, _ = blobs(40, 3, spread=0.4, seed=5)  # overlapping: the seed matters
    physical = fill(db, "seeded", x, [None] * len(x))
    emb = read_embeddings(db, physical)
    for tuning in (Tuning(), Tuning(minibatch_above=100)):
        a = cluster(emb, ClusterParams(k=6, seed=7), tuning)
        b = cluster(emb, ClusterParams(k=6, seed=7), tuning)
        assert [c["members"] for c in a["clusters"]] == [c["members"] for c in b["clusters"]]
        for method in ("spectral", "kmeans"):
            a = cluster(emb, ClusterParams(k=6, seed=7, method=method), tuning)
            b = cluster(emb, ClusterParams(k=6, seed=7, method=method), tuning)
            assert [c["members"] for c in a["clusters"]] == [c["members"] for c in b["clusters"]]
    # auto: spectral up to minibatch_above points, MiniBatchKMeans above.
    assert cluster(emb, ClusterParams(k=6), Tuning(minibatch_above=100))["algorithm"] == (
        "MiniBatchKMeans"
    )
    out = cluster(emb, ClusterParams(k=6), Tuning())
    assert out["algorithm"] == "SpectralClustering" and out["graph_neighbors"] == 10
    assert cluster(emb, ClusterParams(k=6, method="kmeans"), Tuning())["algorithm"] == "KMeans"
    with pytest.raises(ValueError, match="method must be one of"):
        ClusterParams(method="dbscan")


def arcs(n_per: int = 120, gap: float = 0.3):
    """Two long parallel arcs on the sphere (latitudes ±gap/2, half a turn of longitude)."""
    lon = np.linspace(0, np.pi, n_per)
    parts = [
        np.stack(
            [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.full(n_per, np.sin(lat))], 1
        )
        for lat in (-gap / 2, gap / 2)
    ]
    return np.concatenate(parts).astype(np.float32), np.repeat([0, 1], n_per)


def test_spectral_follows_neighbourhoods_where_kmeans_cuts_across(db):
    x, truth = arcs()
    physical = fill(db, "arcs", x, [f"arc{t}" for t in truth])
    emb = read_embeddings(db, physical)
    graph = cluster(emb, ClusterParams(k=2, method="spectral"))
    assert graph["nmi"] == pytest.approx(1.0) and graph["purity"] == 1.0
    # The arcs are long and close: k-means' lowest inertia cuts both in halves.
    assert cluster(emb, ClusterParams(k=2, method="kmeans"))["nmi"] < 0.2


def test_a_graph_in_more_pieces_than_clusters_gets_more_neighbours(db):
    x, truth = blobs(30, 4, spread=0.02)  # four tight groups: 10 neighbours stay inside each
    physical = fill(db, "pieces", x, [f"c{t // 2}" for t in truth])  # asked: 2 clusters
    out = cluster(read_embeddings(db, physical), ClusterParams(k=2, method="spectral"))
    assert out["graph_neighbors"] >= 40  # doubled until a neighbour list crosses to another group
    assert (
        sorted(c["size"] for c in out["clusters"])
        and sum(c["size"] for c in out["clusters"]) == 120
    )


def test_too_few_points_is_refused(db):
    x, _ = blobs(2, 2)
    physical = fill(db, "few", x, [None] * 4)
    emb = read_embeddings(db, physical)
    with pytest.raises(NotEnoughPoints):
        cluster(emb, ClusterParams(k=5))
    with pytest.raises(NotEnoughPoints):
        cluster(emb, ClusterParams())  # automatic k needs 5 points per cluster


def test_fingerprint_follows_labels_and_content(db):
    x, truth = blobs(5, 2)
    physical = fill(db, "fp", x, [f"c{t}" for t in truth])
    before = fingerprint(db, physical)
    assert read_embeddings(db, physical).fingerprint == before
    some = next(db.iter_points(physical, ["uri"])).id
    db.set_payload(physical, [some], {"label": "other"})
    relabelled = fingerprint(db, physical)
    assert relabelled != before
    db.delete_points(physical, [some])
    assert fingerprint(db, physical) not in (before, relabelled)


def test_records_cache_and_interrupted(db, tmp_path):
    x, truth = blobs(10, 3)
    physical = fill(db, "rec", x, [f"c{t}" for t in truth])
    results = ClusterResults(tmp_path / "clusters")
    params, tuning = ClusterParams(k=3), Tuning()
    key = cache_key(physical, params, tuning, fingerprint(db, physical))
    assert results.cached(physical, key) is None
    record = new_record("rec", physical, params, tuning, key)
    done = run_job(results, db, record, threads=1)
    assert done["state"] == "done" and done["result"]["purity"] == 1.0
    assert results.cached(physical, key)["job"] == record["job"]
    assert results.load("rec", record["job"])["result"]["k"] == 3
    assert results.load("other", record["job"]) is None
    assert results.load("rec", "../../etc") is None
    # Another request, or a changed collection: another key, nothing cached.
    assert results.cached(physical, cache_key(physical, ClusterParams(k=4), tuning, "x")) is None

    # A record left "running" by a process that stopped reads as interrupted.
    cut = new_record("rec", physical, params, tuning, key)
    results.save(cut)
    seen = as_seen(results.load("rec", cut["job"]), live=False)
    assert seen["state"] == "interrupted" and "start it again" in seen["error"]
    assert as_seen(cut, live=True)["state"] == "running"
    stopped = run_job(
        results,
        db,
        new_record("rec", physical, ClusterParams(k_max=3), tuning, "k"),
        1,
        should_stop=lambda: True,
    )
    assert stopped["state"] == "interrupted"
    on_disk = json.loads((tmp_path / "clusters" / physical / f"{stopped['job']}.json").read_text())
    assert on_disk["state"] == "interrupted"
