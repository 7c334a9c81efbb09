"""The store layer on Qdrant Edge: atomic aliases, refusing a store it cannot read, a query
right after writing, large collections quantised, a full disk, and the one retry policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core import store
from core.store import Match, StoreFull, StoreUnusable, point_id
from core.store.edge import ALIASES, EdgeStore
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import list_source
from tests.conftest import ROOT
from tests.fakes import DIM, FakeEngine
from tests.stores import edge_store, memory_server


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(db, name: str, n: int, dim: int = 16, labels: bool = True) -> tuple[str, np.ndarray]:
    physical = db.ensure_collection(name, "v1", dim)
    db.point_alias(name, physical)
    x = _unit(n, dim)
    ids = [point_id(f"img{i}") for i in range(n)]
    payloads = [
        {"uri": f"img{i}", "label": f"c{i % 3}" if labels and i % 2 else None, "sha256": f"h{i}"}
        for i in range(n)
    ]
    db.upsert(physical, ids, x, payloads)
    return physical, x


def test_a_query_straight_after_indexing_finds_every_point(synthetic_dir, tmp_path):
    db = edge_store(tmp_path / "q")
    items = list_source(synthetic_dir, "dirs")
    emb = FakeEngine()
    Indexer(db, emb, "photos", IngestOptions(batch=16)).run(items, progress=False)
    physical = db.resolve("photos")
    points = list(db.iter_points(physical, ["uri"], vectors=True))
    assert len(points) == len(items)
    for p in points:  # each point is its own nearest neighbour, at once
        hit = db.search(physical, p.vector, 1, Match(exclude=None), ["uri"])[0]
        assert hit.id == p.id and hit.score == pytest.approx(1.0, abs=1e-4)
    db.close()


@pytest.mark.parametrize("make", [lambda p: edge_store(p), lambda p: memory_server()])
def test_filters_count_and_payload_updates(tmp_path, make):
    db = make(tmp_path / "q")
    physical, x = _fill(db, "photos", 60)
    assert db.count(physical) == 60
    assert db.count(physical, Match(labelled_only=True)) == 30
    assert db.count(physical, Match(label="c1")) == 10
    hits = db.search(physical, x[1], 5, Match(label="c1", exclude=point_id("img1")))
    assert len(hits) == 5 and {h.payload["label"] for h in hits} == {"c1"}
    assert point_id("img1") not in {h.id for h in hits}
    db.set_payload(physical, [point_id("img0")], {"label": "new"})
    assert db.point(physical, point_id("img0"), ["label"]).payload == {"label": "new"}
    db.delete_points(physical, [point_id("img0")])
    assert db.point(physical, point_id("img0")) is None and db.count(physical) == 59
    # Label counts (a facet) and the uri filter of the HTTP writes.
    assert db.facet(physical) == {"c0": 10, "c1": 10, "c2": 10}
    db.set_payload(physical, [point_id(f"img{i}") for i in (3, 9, 15)], {"label": "c1"})
    db.set_payload(physical, [point_id(f"img{i}") for i in range(1, 60, 2)], {"label": None})
    assert db.facet(physical) == {} and db.count(physical, Match(labelled_only=True)) == 0
    assert db.count(physical, Match(uri="img7")) == 1 and db.count(physical, Match(uri="x")) == 0
    db.close()


def test_aliases_survive_a_crash_between_write_and_rename(tmp_path, monkeypatch):
    db = edge_store(tmp_path / "q")
    old, _ = _fill(db, "photos", 5)
    new = db.ensure_collection("photos", "v2", 16)

    def crash(src, dst):  # the process dies after writing the new file, before the rename
        raise SystemExit("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SystemExit):
        db.flip({"photos": new})
    monkeypatch.undo()
    db.close()
    assert json.loads((tmp_path / "q" / ALIASES).read_text())["aliases"] == {"photos": old}
    db = edge_store(tmp_path / "q")  # reopens with the old alias; no temp file left behind
    assert db.aliases() == {"photos": old}
    assert not [p for p in (tmp_path / "q").iterdir() if p.name.endswith(".tmp")]
    db.flip({"photos": new})
    db.close()
    assert edge_store(tmp_path / "q").aliases() == {"photos": new}


def test_one_process_owns_the_store(tmp_path):
    db = edge_store(tmp_path / "q")
    with pytest.raises(StoreUnusable, match=f"in use by pid {os.getpid()}"):
        edge_store(tmp_path / "q")
    code = "from tests.stores import edge_store; import sys; edge_store(sys.argv[1])"
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "q")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode != 0 and "is in use by pid" in other.stderr
    db.close()
    edge_store(tmp_path / "q").close()  # free again once closed


def test_a_foreign_or_corrupt_directory_is_refused_never_emptied(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreUnusable, match=r"is not a dinoserve store .*notes\.txt"):
        edge_store(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    db = edge_store(tmp_path / "q")
    physical, _ = _fill(db, "photos", 5)
    db.close()
    (tmp_path / "q" / ALIASES).write_text("{not json")
    with pytest.raises(StoreUnusable, match=r"aliases\.json is unreadable"):
        edge_store(tmp_path / "q")
    (tmp_path / "q" / ALIASES).write_text(json.dumps({"aliases": {"photos": physical}}))
    shard = tmp_path / "q" / "collections" / physical
    for f in shard.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    db = edge_store(tmp_path / "q")
    with pytest.raises(StoreUnusable, match=f"collection .*{physical} cannot be opened"):
        db.count(physical)
    db.close()


def test_large_collections_move_to_an_int8_copy_and_keep_recall(tmp_path):
    db = edge_store(tmp_path / "q", quantize_above=100)
    physical, x = _fill(db, "photos", 400, dim=32)
    db.optimize(physical)
    cfg = json.loads((tmp_path / "q" / "collections" / physical / "edge_config.json").read_text())
    assert cfg["vectors"][""]["memory"] == "cold" and "scalar" in json.dumps(cfg)
    exact = x @ x[:20].T
    for i in range(20):
        hits = db.search(physical, x[i], 10)
        assert [h.id for h in hits][:1] == [point_id(f"img{i}")]
        truth = {point_id(f"img{j}") for j in np.argsort(-exact[:, i])[:10]}
        assert len(truth & {h.id for h in hits}) >= 9  # rescored with the full vectors
    db.close()
    db = edge_store(tmp_path / "q", quantize_above=100)  # reopens in that form
    assert db.count(physical) == 400 and db.search(physical, x[0], 1)[0].id == point_id("img0")
    db.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (needs root, as in CI); unmounted at the end."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_clearly_keeps_the_store_and_a_rerun_completes(small_disk):
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (40 * 2**20))  # leaves ~24 MiB, 16 of them reserved
    layout = {"min_free_bytes": 16 * 2**20}
    n, dim = 3000, 384
    x = _unit(n, dim)
    ids = [point_id(f"img{i}") for i in range(n)]

    def write_all(db: EdgeStore) -> int:
        physical = db.ensure_collection("photos", "v1", dim)
        done = 0
        for lo in range(0, n, 100):
            payloads = [{"uri": f"img{i}", "sha256": "x" * 64} for i in range(lo, lo + 100)]
            db.upsert(physical, ids[lo : lo + 100], x[lo : lo + 100], payloads)
            done = lo + 100
        return done

    db = edge_store(small_disk / "q", **layout)
    with pytest.raises(StoreFull, match=f"embedded store {small_disk / 'q'} is full"):
        write_all(db)
    physical = "photos__v1"
    written = db.count(physical)
    assert 0 < written < n  # reads go on
    db.close()
    ballast.unlink()  # space freed: the same run again completes, exactly
    db = edge_store(small_disk / "q", **layout)
    assert db.count(physical) == written
    assert write_all(db) == n and db.count(physical) == n
    assert {p.id for p in db.iter_points(physical, [])} == set(ids)
    db.close()


def test_retries_only_transient_failures_with_back_off(monkeypatch):
    from core.store import base

    slept: list[float] = []
    monkeypatch.setattr(base, "time", type("T", (), {"sleep": staticmethod(slept.append)}))
    db = memory_server()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert db.call(flaky) == "ok" and slept == [0.5, 1.0]
    with pytest.raises(store.StoreError, match="failed"):
        db.with_policy(store.REQUEST).call(lambda: (_ for _ in ()).throw(ConnectionError("x")))
    calls.clear()

    def refused():
        calls.append(1)
        raise RuntimeError("bad request")

    with pytest.raises(store.StoreError):
        db.call(refused)
    assert len(calls) == 1  # not transient: no retry


def test_dimension_mismatch_is_an_error(tmp_path):
    db = edge_store(tmp_path / "q")
    db.ensure_collection("photos", "v1", DIM)
    with pytest.raises(ValueError, match="holds 12-d vectors"):
        db.ensure_collection("photos", "v1", DIM + 1)
    db.close()


def test_a_flip_through_a_copy_with_another_policy_is_seen_by_the_original(tmp_path):
    from core.store import REQUEST

    db = edge_store(tmp_path / "q")
    try:
        db.ensure_collection("c", "v1", 4)
        db.ensure_collection("c", "v2", 4)
        db.point_alias("c", "c__v1")
        db.with_policy(REQUEST).flip({"c": "c__v2"})  # the refresh worker's copy
        assert db.resolve_alias("c") == "c__v2"
    finally:
        db.close()
