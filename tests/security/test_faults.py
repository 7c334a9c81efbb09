"""Faults: Qdrant unreachable (503 + Retry-After, /embed unaffected, recovery without a restart),
the indexer through a Qdrant restart (back-off, nothing lost or doubled), and a corrupt model at
reload (the old one keeps serving, the error is reported)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import types

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import store
from core.package import META
from core.store import base as store_base
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import list_source
from tests.fakes import DIM, FakeEngine
from tests.security.test_uploads import error
from tests.stores import all_points, memory_server


def _all_store_routes_503(c: TestClient, png: bytes) -> None:
    for r in (
        c.get("/search?image=x"),
        c.post("/classify", files={"image": ("q.png", png)}),
        c.post("/search", files={"image": ("q.png", png)}),
        c.get("/images/00000000-0000-0000-0000-000000000000"),
    ):
        error(r, 503, "store_unavailable")
        assert r.headers["retry-after"] == "7"


def test_qdrant_unreachable(make_client, png_bytes):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        c = make_client(
            qdrant_url=f"http://127.0.0.1:{port}", serve={"store_attempts": 1, "retry_after_s": 7}
        )
        ready = c.get("/readyz")
        err = error(ready, 503, "not_ready")
        assert "Qdrant" in err["message"] and ready.headers["retry-after"] == "7"
        _all_store_routes_503(c, png_bytes(0))
        assert c.post("/embed", files={"images": ("q.png", png_bytes(0))}).status_code == 200
        assert c.post("/attention", files={"image": ("q.png", png_bytes(0))}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/model").status_code == 200
    finally:
        s.close()


def test_recovers_by_itself_when_qdrant_returns(make_client, outage, png_bytes):
    c = make_client(serve={"retry_after_s": 7})
    qdrant = outage(c.app_state["runtime"].vectors.db)
    files = {"image": ("q.png", png_bytes(0))}
    assert c.post("/classify", files=files).status_code == 200
    qdrant.down = True
    error(c.get("/readyz"), 503, "not_ready")
    _all_store_routes_503(c, png_bytes(0))
    assert c.post("/embed", files={"images": ("q.png", png_bytes(0))}).status_code == 200
    qdrant.down = False  # back: the next request finds it, no restart, no reconnect by hand
    assert c.get("/readyz").status_code == 200
    assert c.post("/classify", files=files).status_code == 200
    # A single dropped call is absorbed by the retry (DINOSERVE_SERVE__STORE_ATTEMPTS=2).
    qdrant.fail_next = 1
    assert c.post("/classify", files=files).status_code == 200
    assert qdrant.failed[-1:] and qdrant.fail_next == 0


@pytest.fixture
def fast_backoff(monkeypatch) -> list[float]:
    """The store's retry sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(store_base, "time", types.SimpleNamespace(sleep=slept.append))
    return slept


def _check_points(client, items) -> None:
    points = all_points(client, "photos", ["uri", "sha256"])
    assert set(points) == {store.point_id(it.uri) for it in items}  # all, each exactly once
    for it in items:
        p = points[store.point_id(it.uri)]
        assert p["uri"] == it.uri
        with open(it.uri, "rb") as f:
            assert p["sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_indexer_survives_a_qdrant_restart_mid_run(synthetic_dir, outage, fast_backoff):
    client = memory_server()
    emb = FakeEngine()
    client.ensure_collection("photos", emb.model_version, DIM)
    items = list_source(synthetic_dir, "dirs")
    qdrant = outage(client)
    qdrant.arm_at = (12, 4)  # a few batches in, the next 4 calls fail (a restart), then it's back
    report = Indexer(client, emb, "photos", IngestOptions(batch=16, workers=1)).run(
        items, progress=False
    )
    assert len(qdrant.failed) == 4 and "upsert" in qdrant.calls[:12]  # mid-run
    # each failed call is retried after 0.5 s, 1 s, 2 s, … (calls in two threads may share it)
    assert len(fast_backoff) == 4 and set(fast_backoff) <= {0.5, 1.0, 2.0, 4.0}
    assert (report.indexed, report.failed) == (len(items), 0)
    _check_points(client, items)
    client.close()


def test_indexer_outage_longer_than_its_retries_then_rerun(synthetic_dir, outage, fast_backoff):
    client = memory_server()
    emb = FakeEngine()
    client.ensure_collection("photos", emb.model_version, DIM)
    items = list_source(synthetic_dir, "dirs")
    qdrant = outage(client)
    qdrant.arm_at = (12, 50)  # mid-run, down for longer than 5 attempts with back-off
    with pytest.raises(store.StoreError):
        Indexer(client, emb, "photos", IngestOptions(batch=16, workers=1)).run(
            items, progress=False
        )
    qdrant.fail_next = 0
    report = Indexer(client, emb, "photos", IngestOptions(batch=16, workers=1)).run(
        items, progress=False
    )
    assert report.indexed + report.unchanged == len(items) and report.failed == 0
    assert report.unchanged > 0  # what was written before the outage is kept, not redone
    _check_points(client, items)
    client.close()


KEY = "faults-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _refresh_and_wait(c: TestClient, png: bytes, version: str) -> dict:
    assert c.post(f"/admin/refresh?version={version}", headers=AUTH).status_code == 202
    deadline = time.monotonic() + 60
    while (st := c.get("/admin/refresh", headers=AUTH).json())["state"] == "running":
        # requests are answered all along, by the old model
        r = c.post("/classify", files={"image": ("q.png", png)})
        assert r.status_code == 200, r.text
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return st


def _corrupt_same_hash(pkg) -> None:
    """Garbage model.onnx whose sha256 in model.json matches: passes verify, fails to load."""
    onnx = pkg / "model.onnx"
    os.chmod(onnx, 0o644)
    onnx.write_bytes(b"\x08\x07garbage onnx")
    meta_path = pkg / META
    meta = json.loads(meta_path.read_text())
    meta["files"]["model.onnx"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    os.chmod(meta_path, 0o644)
    meta_path.write_text(json.dumps(meta))


def _flip_a_byte(pkg) -> None:
    onnx = pkg / "model.onnx"
    os.chmod(onnx, 0o644)
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_flip_a_byte, _corrupt_same_hash])
def test_corrupt_model_at_reload_keeps_the_old_one(env, corrupt):
    corrupt(env.name_dir / env.v2)
    png = env.holdout[0].read_bytes()
    with TestClient(create_app(env.settings(admin_api_key=KEY))) as c:
        st = _refresh_and_wait(c, png, env.v2)
        assert st["state"] == "failed" and st["error"], st
        r = c.post("/classify", files={"image": ("q.png", png)})
        assert r.status_code == 200 and r.json()["model_version"] == env.v1
        assert c.get("/model").json()["version"] == env.v1
        assert c.get("/readyz").status_code == 200
        assert (env.name_dir / "CURRENT").read_text().strip() == env.v1
