"""`dinoserve collections list|delete`: what is indexed, and removing it."""

from __future__ import annotations

import numpy as np

from core import store
from dinoserve.cli import main
from tests.stores import edge_store, memory_server


def _collection(db, name: str, version: str, n: int, alias: bool = True) -> None:
    physical = db.ensure_collection(name, version, 4)
    ids = [store.point_id(f"/x/{name}/{i}") for i in range(n)]
    db.upsert(physical, ids, np.ones((n, 4), np.float32), [{} for _ in ids])
    if alias:
        db.point_alias(name, physical)


def test_collections_list_and_delete(tmp_path, monkeypatch, capsys):
    path = tmp_path / "qdrant"
    client = edge_store(path)
    _collection(client, "mine", "20260101-000000-aaaa", 3, alias=False)  # kept for rollback
    _collection(client, "mine", "20260102-000000-bbbb", 5)
    _collection(client, "images", "20260102-000000-bbbb", 2)
    client.close()
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(path))

    assert main(["collections", "list"]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "mine__20260102-000000-bbbb" in out
    assert "(mine: kept, not served)" in out
    assert memory_server().listing() == []  # a store of its own knows nothing of the others

    assert main(["collections", "delete", "mine"]) == 0
    assert "mine__20260101-000000-aaaa, mine__20260102-000000-bbbb" in capsys.readouterr().out
    client = edge_store(path)
    rows = client.listing()
    client.close()
    v = "20260102-000000-bbbb"
    assert rows == [
        {
            "name": "images",
            "alias": "images",
            "physical": f"images__{v}",
            "model_version": v,
            "points": 2,
        }
    ]

    assert main(["collections", "delete", "mine"]) == 2
    assert "no collection named 'mine'" in capsys.readouterr().err


def test_collections_say_when_a_service_holds_the_store(tmp_path, monkeypatch, capsys):
    path = tmp_path / "qdrant"
    holder = edge_store(path)  # as a running service does
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(path))
    try:
        assert main(["collections", "list"]) == 2
    finally:
        holder.close()
    assert "is in use by pid" in capsys.readouterr().err
