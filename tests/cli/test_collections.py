"""`dinoserve collections list|delete`: what is indexed, and removing it."""

from __future__ import annotations

import numpy as np
from qdrant_client import models as qm

from core import store
from dinoserve.cli import main


def _collection(client, name: str, version: str, n: int, alias: bool = True) -> None:
    physical = store.ensure_collection(client, name, version, 4)
    store.upsert(client, physical, [
        qm.PointStruct(id=store.point_id(f"/x/{name}/{i}"), vector=np.ones(4).tolist(), payload={})
        for i in range(n)
    ])  # fmt: skip
    if alias:
        store.point_alias(client, name, physical)


def test_collections_list_and_delete(tmp_path, monkeypatch, capsys):
    path = tmp_path / "qdrant"
    client = store.open_client(path=path)
    _collection(client, "mine", "20260101-000000-aaaa", 3, alias=False)  # kept for rollback
    _collection(client, "mine", "20260102-000000-bbbb", 5)
    _collection(client, "images", "20260102-000000-bbbb", 2)
    client.close()
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(path))

    assert main(["collections", "list"]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "mine__20260102-000000-bbbb" in out
    assert "(mine: kept, not served)" in out
    rows = {r["physical"]: r for r in store.list_collections(store.open_client(path=":memory:"))}
    assert rows == {}  # a store of its own knows nothing of the others

    assert main(["collections", "delete", "mine"]) == 0
    assert "mine__20260101-000000-aaaa, mine__20260102-000000-bbbb" in capsys.readouterr().out
    client = store.open_client(path=path)
    rows = store.list_collections(client)
    client.close()
    v = "20260102-000000-bbbb"
    assert rows == [{"name": "images", "alias": "images", "physical": f"images__{v}",
                     "model_version": v, "points": 2}]  # fmt: skip

    assert main(["collections", "delete", "mine"]) == 2
    assert "no collection named 'mine'" in capsys.readouterr().err


def test_collections_say_when_a_service_holds_the_store(tmp_path, monkeypatch, capsys):
    path = tmp_path / "qdrant"
    holder = store.open_client(path=path)  # as a running service does
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(path))
    try:
        assert main(["collections", "list"]) == 2
    finally:
        holder.close()
    assert "in use by another process" in capsys.readouterr().err
