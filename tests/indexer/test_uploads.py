"""Images uploaded over HTTP (`blob://` points) and `dinoserve index`: --prune keeps them, and a
run that builds a new model version's collection re-embeds them from the blob store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core import store
from core.blobs import Blobs, blob_uri
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import list_source
from tests.fakes import DIM, FakeEngine
from tests.stores import all_points, edge_store


@pytest.fixture
def images(synthetic_dir, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic_dir, tmp_path / "images"))


def _upload(db, physical: str, blobs: Blobs, data: bytes, label: str) -> str:
    """What POST /collections/{name}/images writes (api/writes.py)."""
    sha = blobs.put(data)
    pid = store.point_id("client/photo-1")
    vec = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
    payload = {
        "uri": blob_uri(sha),
        "label": label,
        "source_uri": "client/photo-1",
        "sha256": sha,
        "width": 32,
        "height": 32,
        "model_version": "fake-v1",
    }
    db.upsert(physical, [pid], vec, [payload])
    return pid


def test_prune_never_deletes_uploaded_images(images, tmp_path):
    db = edge_store(tmp_path / "q")
    blobs = Blobs(tmp_path / "blobs")
    try:
        indexer = Indexer(db, FakeEngine(), "photos", IngestOptions(batch=16, blob_dir=blobs.root))
        report = indexer.run(list_source(images, "dirs"), progress=False)
        pid = _upload(
            db, report.physical, blobs, (images / "star" / "00000.png").read_bytes(), "up"
        )
        for p in sorted(images.rglob("*.png"))[:5]:
            p.unlink()
        again = indexer.run(list_source(images, "dirs"), prune=True, progress=False)
        assert again.pruned == 5
        assert db.point(report.physical, pid, ["label"]).payload == {"label": "up"}
    finally:
        db.close()


def test_a_new_versions_run_re_embeds_uploads_from_the_blob_store(images, tmp_path):
    db = edge_store(tmp_path / "q")
    blobs = Blobs(tmp_path / "blobs")
    try:
        v1 = Indexer(db, FakeEngine(), "photos", IngestOptions(batch=16, blob_dir=blobs.root))
        old = v1.run(list_source(images, "dirs"), progress=False).physical
        data = (images / "ring" / "00003.png").read_bytes()
        pid = _upload(db, old, blobs, data, "uploaded")
        v2 = Indexer(
            db,
            FakeEngine(version="fake-v2"),
            "photos",
            IngestOptions(batch=16, blob_dir=blobs.root),
        )
        report = v2.run(list_source(images, "dirs"), progress=False)
        assert report.physical == "photos__fake-v2" and report.indexed == 121
        assert db.resolve_alias("photos") == old  # a refresh (or an operator) flips it
        up = all_points(db, report.physical, [*store.layout.PAYLOAD_FIELDS, "source_uri"])[pid]
        assert up["label"] == "uploaded" and up["source_uri"] == "client/photo-1"
        assert up["model_version"] == "fake-v2" and up["uri"] == blob_uri(up["sha256"])
        # Embedded from the bytes: the same vector as the file they came from.
        same = store.point_id(str((images / "ring" / "00003.png").resolve()))
        a, b = (db.point(report.physical, i, [], vector=True).vector for i in (pid, same))
        assert np.allclose(a, b, atol=1e-5)
    finally:
        db.close()
