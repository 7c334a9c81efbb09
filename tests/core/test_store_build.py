"""Building the embedded store's index: a large build runs in a child process while this
process goes on (and only that collection says it is busy), a collection is indexed a segment
at a time as it grows, and a build killed with its process is re-run after a reopen."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from core.store import IndexBuilding, Match, StoreError, edge_build, point_id
from tests.conftest import ROOT
from tests.stores import edge_store


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(db, name: str, n: int, dim: int, batch: int = 500) -> tuple[str, np.ndarray]:
    physical = db.ensure_collection(name, "v1", dim)
    db.point_alias(name, physical)
    x = _unit(n, dim)
    for lo in range(0, n, batch):
        ids = [point_id(f"{name}{i}") for i in range(lo, min(n, lo + batch))]
        payloads = [{"uri": f"{name}{i}", "label": f"c{i % 4}"} for i in range(lo, lo + len(ids))]
        db.upsert(physical, ids, x[lo : lo + len(ids)], payloads)
    return physical, x


def test_a_large_build_runs_apart_and_this_process_keeps_answering(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_build, "POLL_S", 0.01)
    db = edge_store(tmp_path / "q", build_apart_above=0, quantize_above=100)
    building, x = _fill(db, "big", 600, 16)
    other, y = _fill(db, "other", 50, 16)
    seen: list[float] = []

    def during(elapsed: float) -> None:
        # This runs in this process while the child builds: the GIL is ours, not the builder's.
        seen.append(elapsed)
        assert db.building(building) is not None and db.building(other) is None
        assert db.search(other, y[0], 1)[0].id == point_id("other0")
        with pytest.raises(IndexBuilding, match="building its search index"):
            db.search(building, x[0], 1)

    db.optimize(building, on_wait=during)
    assert seen, "the build ended before this process was asked to wait"
    assert db.building(building) is None
    assert db.count(building) == 600  # reopened after the build
    exact = x @ x[:10].T
    for i in range(10):
        hits = db.search(building, x[i], 10)
        truth = {point_id(f"big{j}") for j in np.argsort(-exact[:, i])[:10]}
        assert hits[0].id == point_id(f"big{i}") and len(truth & {h.id for h in hits}) >= 9
    assert db.search(building, x[1], 5, Match(label="c1"))[0].id == point_id("big1")
    db.close()


def test_a_build_that_fails_says_why_and_leaves_the_collection_readable(tmp_path, monkeypatch):
    db = edge_store(tmp_path / "q", build_apart_above=0)
    physical, x = _fill(db, "photos", 100, 8)
    spec_json = edge_build.ShardSpec.to_json
    monkeypatch.setattr(edge_build.ShardSpec, "to_json", lambda self: "{not json")
    with pytest.raises(StoreError, match=r"building the search index of .* failed"):
        db.optimize(physical)
    monkeypatch.setattr(edge_build.ShardSpec, "to_json", spec_json)
    assert db.building(physical) is None and db.count(physical) == 100
    assert db.search(physical, x[3], 1)[0].id == point_id("photos3")
    db.close()


def test_a_growing_collection_is_indexed_a_segment_at_a_time(tmp_path, monkeypatch):
    db = edge_store(tmp_path / "q", segment_points=1000)
    built: list[int] = []
    real = type(db)._optimize

    def spy(self, physical, points, on_wait=None):
        built.append(points)
        return real(self, physical, points, on_wait)

    monkeypatch.setattr(type(db), "_optimize", spy)
    physical, x = _fill(db, "photos", 3500, 16, batch=250)
    assert built == [1000, 2000, 3000]  # after each 1,000 points written, not at every write
    db.optimize(physical)
    assert built[-1] == 3500 and db.count(physical) == 3500
    assert db.search(physical, x[3333], 1)[0].id == point_id("photos3333")
    db.close()


KILLED_BUILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from core.store import edge_build, point_id
    from tests.stores import edge_store

    edge_build.POLL_S = 0.05
    db = edge_store(sys.argv[1], build_apart_above=0)
    physical = db.ensure_collection("photos", "v1", 256)
    db.point_alias("photos", physical)
    x = np.random.default_rng(0).standard_normal((12000, 256)).astype(np.float32)
    for lo in range(0, 12000, 1000):
        ids = [point_id(f"img{i}") for i in range(lo, lo + 1000)]
        payloads = [{"uri": f"img{i}"} for i in range(lo, lo + 1000)]
        db.upsert(physical, ids, x[lo : lo + 1000], payloads)
    db.flush()

    def waiting(elapsed):
        if elapsed > 0.3:
            print("building", flush=True)

    db.optimize(physical, on_wait=waiting)
    print("built", flush=True)
    """
)


def test_sigkill_during_a_build_then_reopen_and_build_again(tmp_path):
    path = tmp_path / "q"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert line.strip() == "building", "the build ended before it could be killed"
    deadline = time.monotonic() + 10
    db = edge_store(path)
    physical = db.resolve("photos")
    while True:  # the builder dies with its parent (PR_SET_PDEATHSIG), and its WAL lock with it
        try:
            assert db.count(physical) == 12000
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    db.optimize(physical)  # re-run: the killed build left nothing in the way
    x = np.random.default_rng(0).standard_normal((12000, 256)).astype(np.float32)
    assert db.search(physical, x[123], 1)[0].id == point_id("img123")
    assert db.count(physical) == 12000
    db.close()


def test_a_request_handler_s_writes_do_not_wait_for_a_segment(tmp_path, monkeypatch):
    db = edge_store(tmp_path / "q", segment_points=1000)
    built: list[int] = []
    monkeypatch.setattr(type(db), "_optimize", lambda self, ph, n, on_wait=None: built.append(n))
    physical = db.ensure_collection("photos", "v1", 8)
    x = _unit(1500, 8)
    for lo in range(0, 1500, 500):
        ids = [point_id(f"img{i}") for i in range(lo, lo + 500)]
        db.upsert(physical, ids, x[lo : lo + 500], [{} for _ in ids], index_segments=False)
    assert built == [] and db.count(physical) == 1500
    db.close()


def test_opening_a_large_collection_reads_its_int8_copy_and_graph_once(tmp_path, monkeypatch):
    import core.store.edge as edge

    db = edge_store(tmp_path / "q", quantize_above=100)
    physical, x = _fill(db, "photos", 12000, 256, batch=2000)  # past the indexing threshold
    db.optimize(physical)
    db.close()
    warmed: list[int] = []
    real = edge.warm
    monkeypatch.setattr(edge, "warm", lambda d: warmed.append(real(d)) or warmed[-1])
    db = edge_store(tmp_path / "q", quantize_above=100)
    assert db.search(physical, x[7], 1)[0].id == point_id("photos7")
    assert len(warmed) == 1 and warmed[0] >= 12000 * 256  # at least the int8 copy
    db.close()
