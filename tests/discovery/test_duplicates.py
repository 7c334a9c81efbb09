"""Near-duplicate groups (discovery/duplicates.py) on both store backends, with synthetic vectors
standing in for embeddings: exact and near copies group, images of one class (similar, not
copies) and unrelated images do not, and the cache follows writes."""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import DiscoverySettings
from core.store import Store, point_id
from discovery.duplicates import DuplicateCache, find_duplicates
from tests.stores import edge_store, memory_server

DIM = 64
DEFAULT = DiscoverySettings().duplicate_threshold


@pytest.fixture(params=["edge", "server"])
def db(request, tmp_path) -> Store:
    s = edge_store(tmp_path / "q") if request.param == "edge" else memory_server()
    yield s
    s.close()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine `cos` from unit vector `v`."""
    r = rng.normal(size=v.shape)
    r -= (r @ v) * v
    return unit(cos * v + np.sqrt(1 - cos**2) * unit(r))


def put(db: Store, vectors: np.ndarray, labels: list | None = None) -> tuple[str, list[str]]:
    physical = db.create_physical("dups__v1", DIM)
    ids = [point_id(f"img{i}") for i in range(len(vectors))]
    labels = labels or [None] * len(vectors)
    payloads = [{"uri": f"img{i}", "label": lab} for i, lab in enumerate(labels)]
    db.upsert(physical, ids, vectors, payloads)
    return physical, ids


def classes(rng: np.random.Generator, n_classes: int, per_class: int) -> np.ndarray:
    """Images of a class: similar (cosine ≈ 0.5 to one another), never copies."""
    centres = unit(rng.normal(size=(n_classes, DIM)))
    return np.stack([near(c, 0.7, rng) for c in centres for _ in range(per_class)])


def groups_of(found, ids: list[str]) -> list[set[int]]:
    where = {pid: i for i, pid in enumerate(ids)}
    return [{where[m.id] for m in g.members} for g in found.groups]


def test_exact_copies_always_group_and_the_rest_does_not(db):
    rng = np.random.default_rng(0)
    base = classes(rng, 8, 20)  # 160 images of 8 classes
    # 0 twice, 1 three times, 2 fifteen times: more copies than k (10) neighbours per image
    vectors = np.concatenate([base, base[[0]], base[[1, 1]], np.repeat(base[[2]], 14, axis=0)])
    physical, ids = put(db, vectors)
    found = find_duplicates(db, physical, DEFAULT, k=10, batch=64)
    assert found.points == len(vectors)
    assert groups_of(found, ids) == [
        {2, *range(163, 177)},  # largest first
        {1, 161, 162},
        {0, 160},
    ]
    for g in found.groups:
        assert g.min_edge == pytest.approx(1.0, abs=1e-5)
        assert all(m.similarity == pytest.approx(1.0, abs=1e-5) for m in g.members)
        assert [m.uri for m in g.members] == [f"img{ids.index(m.id)}" for m in g.members]


def test_near_copies_group_around_their_centre(db):
    rng = np.random.default_rng(1)
    base = classes(rng, 5, 30)
    copies = np.stack([near(base[7], 0.97, rng) for _ in range(4)])
    physical, ids = put(db, np.concatenate([base, copies]), labels=["cat"] * 150 + [None] * 4)
    found = find_duplicates(db, physical, DEFAULT, k=10, batch=32)
    assert groups_of(found, ids) == [{7, 150, 151, 152, 153}]
    (g,) = found.groups
    assert g.members[0].id == ids[7]  # the original is the centre of its copies
    assert g.members[0].label == "cat" and g.members[1].label is None
    sims = [m.similarity for m in g.members]
    assert sims == sorted(sims, reverse=True) and g.min_similarity == sims[-1] > 0.9
    assert g.min_edge >= DEFAULT


def test_unrelated_and_same_class_images_never_group_at_the_default(db):
    rng = np.random.default_rng(2)
    vectors = np.concatenate([classes(rng, 10, 40), unit(rng.normal(size=(100, DIM)))])
    physical, _ = put(db, vectors)
    found = find_duplicates(db, physical, DEFAULT)
    assert found.points == 500 and found.groups == []


def test_progress_counts_every_point(db):
    rng = np.random.default_rng(3)
    physical, _ = put(db, unit(rng.normal(size=(70, DIM))))
    seen: list[tuple[int, int]] = []
    find_duplicates(db, physical, 0.9, batch=32, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(32, 70), (64, 70), (70, 70)]


def test_bad_threshold_is_refused(db):
    physical, _ = put(db, unit(np.ones((2, DIM))))
    for t in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="threshold"):
            find_duplicates(db, physical, t)


def test_the_cache_answers_until_a_write(db):
    rng = np.random.default_rng(4)
    vectors = unit(rng.normal(size=(30, DIM)))
    physical, ids = put(db, np.concatenate([vectors, vectors[[0]]]))
    cache = DuplicateCache()
    first = cache.get(db, physical, 0.95, 10)
    assert cache.get(db, physical, 0.95, 10) is first  # paging: computed once
    assert cache.get(db, physical, 0.99, 10) is not first  # another threshold
    # A write that keeps the point count (a relabel) still invalidates.
    db.set_payload(physical, [ids[0]], {"label": "dog"})
    second = cache.get(db, physical, 0.95, 10)
    assert second is not first
    assert {m.label for m in second.groups[0].members} == {"dog", None}
    db.delete_points(physical, [ids[30]])
    assert cache.get(db, physical, 0.95, 10).groups == []


def test_batched_search_at_a_narrow_ef_answers_as_the_plain_search(db):
    rng = np.random.default_rng(5)
    vectors = unit(rng.normal(size=(60, DIM)))
    physical, _ = put(db, vectors)
    plain = [[h.id for h in db.search(physical, v, 4, fields=())] for v in vectors[:10]]
    for ef in (None, 8):
        batched = db.search_many(physical, vectors[:10], 4, ef=ef)
        assert [[h.id for h in near] for near in batched] == plain
