"""Moving without re-embedding: the previous version's local-mode directory migrated to Edge
once, and `dinoserve store export --to URL` to a server (in-memory stand-in), resumable."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from core.store import point_id
from core.store.migrate import BACKUP, copy_store
from tests.stores import edge_store, memory_server


def _vectors(db, physical):
    return {p.id: (p.payload, np.asarray(p.vector)) for p in db.iter_points(physical, vectors=True)}


def _local_mode_store(path, n: int = 50, dim: int = 8) -> np.ndarray:
    """What the previous version wrote: qdrant-client's local mode, two collections, aliases."""
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = QdrantClient(path=str(path))
    for name in ("photos__v1", "photos__v2"):
        c.create_collection(
            name, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
        )
        points = [
            qm.PointStruct(
                id=point_id(f"i{i}"),
                vector=x[i].tolist(),
                payload={"uri": f"i{i}", "label": f"c{i % 2}", "sha256": f"h{i}"},
            )
            for i in range(n)
        ]
        c.upsert(name, points=points)
    alias = qm.CreateAlias(collection_name="photos__v1", alias_name="photos")
    c.update_collection_aliases(
        change_aliases_operations=[qm.CreateAliasOperation(create_alias=alias)]
    )
    c.close()
    return x


def test_a_local_mode_directory_is_migrated_once_and_kept_as_a_backup(tmp_path):
    path = tmp_path / "qdrant"
    x = _local_mode_store(path)
    db = edge_store(path)
    assert db.aliases() == {"photos": "photos__v1"}
    assert db.collections() == ["photos__v1", "photos__v2"]
    points = _vectors(db, "photos__v1")
    assert len(points) == 50
    payload, vec = points[point_id("i7")]
    assert payload == {"uri": "i7", "label": "c1", "sha256": "h7"}
    assert np.allclose(vec, x[7], atol=1e-6)
    assert db.search("photos__v1", x[3], 1)[0].id == point_id("i3")
    db.close()
    assert (path / BACKUP / "meta.json").is_file() and not (path / "meta.json").exists()
    db = edge_store(path)  # the second open is a plain open
    assert db.count("photos__v2") == 50
    db.close()


def test_an_interrupted_migration_is_done_again(tmp_path, monkeypatch):
    path = tmp_path / "qdrant"
    _local_mode_store(path)
    from core.store import migrate

    real = migrate.copy_store

    def dies(src, dst, **kw):
        real(src, dst, **kw)
        raise KeyboardInterrupt  # killed after copying, before the layout is marked

    monkeypatch.setattr(migrate, "copy_store", dies)
    with pytest.raises(KeyboardInterrupt):
        edge_store(path)
    monkeypatch.undo()
    db = edge_store(path)
    assert db.count("photos__v1") == 50 and db.aliases() == {"photos": "photos__v1"}
    db.close()


def test_export_copies_everything_and_resumes(tmp_path):
    src = edge_store(tmp_path / "q")
    x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    for version in ("v1", "v2"):
        physical = src.ensure_collection("photos", version, 8)
        src.upsert(
            physical,
            [point_id(f"i{i}") for i in range(300)],
            x,
            [{"uri": f"i{i}", "sha256": f"h{i}"} for i in range(300)],
        )
    src.point_alias("photos", "photos__v2")
    dst = memory_server()

    pages = []

    def stop_after_two_pages(name, done, total):
        pages.append(done)
        if len(pages) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_store(src, dst, page=100, progress=stop_after_two_pages)
    assert dst.count("photos__v1") == 200 and dst.aliases() == {}
    report = copy_store(src, dst, page=100)
    assert report.collections["photos__v1"] == {"total": 300, "copied": 100, "skipped": 200}
    assert report.collections["photos__v2"]["copied"] == 300
    assert dst.aliases() == {"photos": "photos__v2"}
    for physical in ("photos__v1", "photos__v2"):
        a, b = _vectors(src, physical), _vectors(dst, physical)
        assert a.keys() == b.keys()
        for pid, (payload, vec) in a.items():
            assert b[pid][0] == payload and np.allclose(b[pid][1], vec, atol=1e-6)
    again = copy_store(src, dst, page=100)  # idempotent
    assert all(c["copied"] == 0 for c in again.collections.values())
    src.close()


def test_store_cli_info_and_export_refusal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    db = edge_store(tmp_path / "q")
    physical = db.ensure_collection("photos", "v1", 8)
    db.point_alias("photos", physical)
    db.close()
    from dinoserve.cli import main

    assert main(["store", "info"]) == 0
    assert "photos__v1: 0 points, 8-d  ← photos" in capsys.readouterr().out
    monkeypatch.setenv("DINOSERVE_QDRANT_URL", "http://127.0.0.1:9")
    assert main(["store", "export", "--to", "http://127.0.0.1:9"]) == 2
    assert "already is a server" in capsys.readouterr().err
