"""The admin API: its key, a refresh and rollback through it, and refreshes that fail midway or
on a corrupt package without changing anything that is served."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.package import current_version
from refresh import reembed

KEY = "s3cret-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def serve(env):
    opened: list[TestClient] = []

    def make(**overrides) -> TestClient:
        while opened:  # the embedded store admits one client: one app at a time
            opened.pop().__exit__(None, None, None)
        c = TestClient(create_app(env.settings(**{"admin_api_key": KEY, **overrides})))
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _wait(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (st := client.get("/admin/refresh", headers=AUTH).json())["state"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    return st


def _served(client: TestClient, png: bytes) -> tuple[str, str]:
    r = client.post("/classify", files={"image": ("q.png", png, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["model_version"], r.json()["physical_collection"]


def test_admin_key_is_required(env, serve):
    off = serve(admin_api_key=None)
    r = off.get("/admin/models", headers=AUTH)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    on = serve()
    missing = on.post("/admin/refresh")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = on.get("/admin/refresh", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    assert on.get("/admin/refresh", headers={"X-API-Key": KEY}).json()["state"] == "idle"
    models = on.get("/admin/models", headers=AUTH).json()
    assert [v["version"] for v in models["versions"]] == [env.v1, env.v2]
    assert models["served"] == models["current"] == env.v1
    assert on.post("/admin/rollback", headers=AUTH).status_code == 409  # nothing older


def test_refresh_then_rollback(env, serve):
    c = serve()
    png = env.holdout[0].read_bytes()
    assert _served(c, png) == (env.v1, f"shapes__{env.v1}")
    r = c.post("/admin/refresh", headers=AUTH)
    assert r.status_code == 202 and r.json()["to_version"] == env.v2
    st = _wait(c)
    assert st["state"] == "done", st
    assert st["collections"]["shapes"]["done"] == st["collections"]["shapes"]["total"] == 60
    assert set(st["collections"]) == {"shapes", "more"}
    assert _served(c, png) == (env.v2, f"shapes__{env.v2}")
    assert current_version(env.name_dir) == env.v2
    assert c.get("/model").json()["version"] == env.v2
    stale = c.post("/classify?collection=stale", files={"image": ("q.png", png, "image/png")})
    assert stale.json()["error"]["code"] == "model_version_mismatch"  # left alone
    back = c.post("/admin/rollback", headers=AUTH)
    assert back.status_code == 200 and back.json()["to_version"] == env.v1
    assert _served(c, png) == (env.v1, f"shapes__{env.v1}")
    assert current_version(env.name_dir) == env.v1
    models = c.get("/admin/models", headers=AUTH).json()
    cols = {row["version"]: row["collections"] for row in models["versions"]}
    assert cols[env.v2][f"shapes__{env.v2}"] == {"points": 60, "alias": None}  # kept
    assert cols[env.v1][f"shapes__{env.v1}"] == {"points": 60, "alias": "shapes"}


def _assert_nothing_changed(c: TestClient, env, png: bytes) -> None:
    assert _served(c, png) == (env.v1, f"shapes__{env.v1}")
    assert current_version(env.name_dir) == env.v1
    models = c.get("/admin/models", headers=AUTH).json()
    v2_cols = next(r["collections"] for r in models["versions"] if r["version"] == env.v2)
    assert v2_cols == {}  # the partial collections were dropped
    v1_cols = next(r["collections"] for r in models["versions"] if r["version"] == env.v1)
    assert {c["alias"] for c in v1_cols.values()} == {"shapes", "more"}


def test_failed_reembed_changes_nothing_served(env, serve, monkeypatch):
    real = reembed.reembed
    calls = []

    def failing(q, source, target, engine, **kw):
        calls.append(source)
        if source.startswith("shapes"):  # the second collection fails after its first batch
            kw["progress"] = boom
        return real(q, source, target, engine, **kw)

    def boom(report) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(reembed, "reembed", failing)
    c = serve()
    png = env.holdout[0].read_bytes()
    assert c.post("/admin/refresh", headers=AUTH).status_code == 202
    st = _wait(c)
    assert st["state"] == "failed" and "disk full (injected)" in st["error"], st
    assert calls == [f"more__{env.v1}", f"shapes__{env.v1}"]
    _assert_nothing_changed(c, env, png)


def test_corrupt_package_fails_cleanly(env, serve):
    onnx = env.name_dir / env.v2 / "model.onnx"
    os.chmod(onnx, 0o644)
    onnx.write_bytes(b"not a model")
    c = serve()
    png = env.holdout[0].read_bytes()
    assert c.post("/admin/refresh", headers=AUTH).status_code == 202
    st = _wait(c)
    assert st["state"] == "failed" and "IntegrityError" in st["error"], st
    _assert_nothing_changed(c, env, png)
    again = c.post(f"/admin/refresh?version={env.v1}", headers=AUTH)
    assert again.status_code == 409  # already served
    assert c.post("/admin/refresh?version=nope", headers=AUTH).status_code == 409
