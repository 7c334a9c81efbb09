"""`dinoserve duplicates NAME`: groups as text or JSON; one clear line while a service holds
the store and none answers."""

from __future__ import annotations

import json

import numpy as np

from core import store
from dinoserve.cli import main
from tests.api.test_serve import _free_port
from tests.stores import edge_store


def _store(path) -> list[str]:
    """`dups`: 40 unrelated images, image 0 three times more, image 1 once more."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 16)).astype(np.float32)
    v = np.concatenate([v, v[[0, 0, 0, 1]]])
    uris = [f"/img/{i}.jpg" for i in range(40)] + [
        "/img/0b.jpg",
        "/img/0c.jpg",
        "/img/0d.jpg",
        "/img/1b.jpg",
    ]
    db = edge_store(path)
    physical = db.ensure_collection("dups", "20260101-000000-aaaa", 16)
    ids = [store.point_id(u) for u in uris]
    db.upsert(
        physical, ids, v, [{"uri": u, "label": "cat" if u == "/img/1.jpg" else None} for u in uris]
    )
    db.point_alias("dups", physical)
    db.close()
    return ids


def test_groups_as_text_and_json(tmp_path, monkeypatch, capsys):
    ids = _store(tmp_path / "q")
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    assert main(["duplicates", "dups", "--threshold", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "dups: 2 groups of near-duplicates (6 of 44 images) at similarity ≥ 0.99" in out
    assert "group 1: 4 images" in out and "group 2: 2 images" in out
    assert "1.000  /img/1.jpg  [cat]" in out and "1.000  /img/1b.jpg" in out

    assert main(["duplicates", "dups", "--threshold", "0.99", "--limit", "1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total_groups"] == 2 and len(body["groups"]) == 1
    assert {m["id"] for m in body["groups"][0]["members"]} == {ids[0], *ids[40:43]}


def test_errors(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "q")
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    assert main(["duplicates", "nope"]) == 2
    assert "no collection named 'nope'" in capsys.readouterr().err
    assert main(["duplicates", "dups", "--threshold", "1.5"]) == 2
    assert "--threshold must be in (0, 1]" in capsys.readouterr().err


def test_a_held_store_with_no_service_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "q")
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", str(_free_port()))
    holder = edge_store(tmp_path / "q")  # as a running service does
    try:
        assert main(["duplicates", "dups"]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "in use by pid" in err and "no service answers at http://127.0.0.1:" in err
