import csv
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import store
from indexer.ingest import IngestOptions, Limits
from indexer.pipeline import Indexer
from indexer.sources import SourceError, list_source, parse_shard
from tests.fakes import DIM, FakeEngine
from tests.stores import all_points, edge_store, memory_server


@pytest.fixture
def images(synthetic_dir, tmp_path) -> Path:
    """A private copy (tests modify it): 10 classes × 12 images."""
    return Path(shutil.copytree(synthetic_dir, tmp_path / "images"))


@pytest.fixture(params=["edge", "server"])
def client(request, tmp_path):
    """Both backends: the embedded Edge store and a server (its in-memory stand-in)."""
    c = edge_store(tmp_path / "edge") if request.param == "edge" else memory_server()
    yield c
    c.close()


_all_points = all_points


def test_directory_with_labels_alias_and_payload(images, client):
    report = Indexer(client, FakeEngine(), "photos", IngestOptions(batch=16)).run(
        list_source(images, "dirs"), progress=False
    )
    assert (report.indexed, report.unchanged, report.failed) == (120, 0, 0)
    assert report.physical == "photos__fake-v1"
    assert client.resolve_alias("photos") == "photos__fake-v1"
    points = _all_points(client, "photos")
    assert len(points) == 120
    some_id, payload = next(iter(points.items()))
    assert some_id == store.point_id(payload["uri"])
    assert payload["label"] == Path(payload["uri"]).parent.name
    assert payload["model_version"] == "fake-v1"
    assert (payload["width"], payload["height"]) == (32, 32)
    assert payload["sha256"] and payload["indexed_at"]
    assert client.dim("photos__fake-v1") == DIM


def test_no_labels_unless_asked(images, client):
    Indexer(client, FakeEngine(), "nolabels").run(list_source(images), progress=False)
    assert all(p["label"] is None for p in _all_points(client, "nolabels").values())


def test_rerun_skips_unchanged_and_picks_up_changes(images, client):
    indexer = Indexer(client, FakeEngine(), "photos", IngestOptions(batch=16))
    indexer.run(list_source(images, "dirs"), progress=False)
    again = indexer.run(list_source(images, "dirs"), progress=False)
    assert (again.indexed, again.unchanged) == (0, 120)
    changed = next(images.rglob("*.png"))
    Image.new("RGB", (20, 10), "white").save(changed)
    third = indexer.run(list_source(images, "dirs"), progress=False)
    assert (third.indexed, third.unchanged) == (1, 119)
    point = _all_points(client, "photos")[store.point_id(str(changed.resolve()))]
    assert (point["width"], point["height"]) == (20, 10)


def test_prune_removes_points_whose_source_is_gone(images, client):
    indexer = Indexer(client, FakeEngine(), "photos")
    indexer.run(list_source(images, "dirs"), progress=False)
    gone = sorted(images.rglob("*.png"))[:5]
    for p in gone:
        p.unlink()
    report = indexer.run(list_source(images, "dirs"), prune=True, progress=False)
    assert report.pruned == 5
    uris = {p["uri"] for p in _all_points(client, "photos").values()}
    assert len(uris) == 115 and not uris & {str(p.resolve()) for p in gone}


def test_bad_files_are_skipped_and_reported(images, client, tmp_path):
    bad = images / "circle"
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.jpg").write_text("hello, not an image")
    good_bytes = next(bad.glob("0*.png")).read_bytes()
    (bad / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 3])
    Image.new("RGB", (1200, 1000)).save(bad / "huge.png")  # 1.2 Mpx, over the limit below
    failures = tmp_path / "failures.jsonl"
    report = Indexer(
        client, FakeEngine(), "photos", IngestOptions(limits=Limits(max_pixels=1_000_000))
    ).run(list_source(images, "dirs"), failures_path=failures, progress=False)
    assert (report.indexed, report.failed) == (120, 4)
    rows = {Path(r["uri"]).name: r["reason"] for r in map(json.loads, failures.open())}
    assert rows == {
        "zero.png": "empty",
        "text.jpg": "invalid",
        "truncated.png": "invalid",
        "huge.png": "too_large",
    }


def test_manifest_csv_and_jsonl_with_extra_payload(images, client, tmp_path):
    files = sorted(images.rglob("*.png"))[:6]
    csv_path = images / "manifest.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "photographer"])
        for i, p in enumerate(files):
            w.writerow([str(p.relative_to(images)), f"L{i % 2}", f"ann{i}"])
    jsonl_path = tmp_path / "manifest.jsonl"
    jsonl_path.write_text("".join(json.dumps({"path": str(p), "label": "x"}) + "\n" for p in files))
    Indexer(client, FakeEngine(), "csv").run(list_source("", manifest=csv_path), progress=False)
    points = _all_points(client, "csv")
    full = all_points(client, "csv", ["photographer", "label"])
    assert len(points) == 6
    assert sorted(p["photographer"] for p in full.values()) == [f"ann{i}" for i in range(6)]
    Indexer(client, FakeEngine(), "jsonl").run(list_source("", manifest=jsonl_path), progress=False)
    assert set(_all_points(client, "jsonl")) == set(points)  # same URIs → same ids


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_tar_sources_with_labels(images, client, tmp_path, mode, suffix):
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(images, arcname="train")  # a wrapping folder, then the classes
    report = Indexer(client, FakeEngine(), "tar").run(list_source(archive, "dirs"), progress=False)
    assert report.indexed == 120
    labels = {p["label"] for p in _all_points(client, "tar").values()}
    assert labels == {d.name for d in images.iterdir()}


def test_shards_cover_the_source_exactly_once(images, client):
    items = list_source(images, "dirs")
    seen: list[str] = []
    for i in range(3):
        report = Indexer(client, FakeEngine(), f"s{i}").run(
            items, shard=parse_shard(f"{i}/3"), progress=False
        )
        assert 0 < report.total < 120
        seen += list(_all_points(client, f"s{i}"))
    assert len(seen) == len(set(seen)) == 120


def test_shard_spec_validation():
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1/0", "-1/3"):
        with pytest.raises(SourceError):
            parse_shard(bad)


def test_on_disk_store_persists(images, tmp_path):
    path = tmp_path / "qdrant"
    c = edge_store(path)
    Indexer(c, FakeEngine(), "photos").run(list_source(images, "dirs"), progress=False)
    c.close()
    c = edge_store(path)
    assert c.count(c.resolve("photos")) == 120
    report = Indexer(c, FakeEngine(), "photos").run(list_source(images, "dirs"), progress=False)
    assert report.unchanged == 120
    c.close()


def test_new_model_version_gets_its_own_physical_collection(images, client):
    items = list_source(images, "dirs")
    Indexer(client, FakeEngine(version="v1"), "photos").run(items, progress=False)
    report = Indexer(client, FakeEngine(version="v2"), "photos").run(items, progress=False)
    assert report.physical == "photos__v2" and report.indexed == 120
    # The alias keeps serving v1 until a refresh flips it; embeddings never mix.
    assert client.resolve_alias("photos") == "photos__v1"
    assert {p["model_version"] for p in _all_points(client, "photos__v2").values()} == {"v2"}


def test_bad_collection_names(client):
    for bad in ("", "a__b", "../x", "x" * 80, "sp ace"):
        with pytest.raises(ValueError):
            Indexer(client, FakeEngine(), bad)


def test_embeddings_are_stored_normalised(images, client):
    Indexer(client, FakeEngine(), "photos").run(list_source(images, "dirs"), progress=False)
    recs, _ = client.scroll(client.resolve("photos"), limit=5, vectors=True)
    for r in recs:
        assert abs(np.linalg.norm(r.vector) - 1) < 1e-5


def test_losing_the_create_race_to_another_worker_is_fine(monkeypatch):
    # Only a server is shared by shard workers (one process at a time opens the embedded store).
    client = memory_server()
    physical = client.ensure_collection("race", "v1", DIM)
    real_exists = client._exists
    calls = []

    def stale_exists(name):  # the first check ran before the other worker created it
        calls.append(name)
        return False if len(calls) == 1 else real_exists(name)

    monkeypatch.setattr(client, "_exists", stale_exists)
    assert client.ensure_collection("race", "v1", DIM) == physical
    assert len(calls) == 2


def test_the_index_build_is_a_stage_of_the_progress(images, tmp_path, monkeypatch, capsys):
    from core.store import edge_build

    monkeypatch.setattr(edge_build, "POLL_S", 0.01)
    db = edge_store(tmp_path / "q", build_apart_above=0)  # every build in a child: it reports
    seen: list[tuple[str, float]] = []
    report = Indexer(db, FakeEngine(), "photos", IngestOptions(batch=16)).run(
        list_source(images, "dirs"), on_batch=lambda r, done: seen.append((r.stage, done))
    )
    stages = [s for s, _ in seen]
    assert stages[0] == "embedding" and "building index" in stages
    assert stages.index("building index") > stages.index("embedding")
    assert all(done == 120 for s, done in seen if s == "building index")
    assert report.stage == "done" and report.building_s > 0
    assert "build index photos__fake-v1" in capsys.readouterr().err  # the bar of that stage
    assert db.count(report.physical) == 120
    db.close()
