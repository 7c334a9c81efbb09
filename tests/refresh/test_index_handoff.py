"""`dinoserve index` while a service owns the embedded store: the job is handed to the service
through its admin API (progress, the same summary and failure report), and every way that cannot
work says in one line what to do."""

from __future__ import annotations

import time

import httpx

from dinoserve.cli import main
from tests.refresh.conftest import ADMIN_KEY
from tests.stores import edge_store


def test_index_is_handed_to_the_running_service(cli_env, start_server, monkeypatch, capsys):
    env = cli_env
    base = start_server(env.settings(admin_api_key=ADMIN_KEY))
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", base.rsplit(":", 1)[1])
    argv = ["index", str(env.images), "--labels", "dirs", "--collection", "added"]
    assert main(argv) == 2  # no admin key: one line saying what to set
    err = capsys.readouterr().err
    assert "is in use by pid" in err and "DINOSERVE_ADMIN_API_KEY" in err and base in err

    monkeypatch.setenv("DINOSERVE_ADMIN_API_KEY", ADMIN_KEY)
    (env.images / "broken.png").write_bytes(b"not an image")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"the service at {base} owns the store" in out
    assert "added → added__" in out and "60 indexed, 0 unchanged, 1 failed" in out
    assert "skipped images and reasons:" in out
    # The service answers from the new collection at once.
    png = sorted(env.holdout)[0].read_bytes()
    r = httpx.post(f"{base}/classify?collection=added", files={"image": ("q.png", png)})
    assert r.status_code == 200 and r.json()["neighbors"]
    assert main(argv) == 0  # again: nothing new
    assert "0 indexed, 60 unchanged" in capsys.readouterr().out

    assert main(["index", str(env.images / "missing"), "--collection", "x"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_store_held_without_a_service_names_the_address(cli_env, monkeypatch, capsys):
    env = cli_env
    monkeypatch.setenv("DINOSERVE_ADMIN_API_KEY", ADMIN_KEY)
    holder = edge_store(env.qdrant_path)  # some process holds it; nothing listens on the port
    try:
        assert main(["index", str(env.images), "--collection", "x"]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert "no service answers at http://127.0.0.1:" in err and "DINOSERVE_SERVE__PORT" in err
    assert "Traceback" not in err


def test_the_service_answers_while_an_index_job_builds_its_index(env, start_server, monkeypatch):
    import threading

    import core.store.edge as edge

    gate, entered = threading.Event(), threading.Event()
    real = edge.build_apart

    def held(shard_dir, spec, on_wait=None):  # the build waits for the test's go
        entered.set()
        assert gate.wait(60)
        return real(shard_dir, spec, on_wait)

    monkeypatch.setattr(edge, "build_apart", held)
    settings = env.settings(admin_api_key=ADMIN_KEY, qdrant={"build_apart_above": 0})
    base = start_server(settings)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    params = {"source": str(env.images), "collection": "added", "labels": "dirs"}
    assert httpx.post(f"{base}/admin/index", params=params, headers=auth).status_code == 202
    assert entered.wait(120)
    st = httpx.get(f"{base}/admin/index", headers=auth).json()
    assert st["state"] == "running" and st["stage"] == "building index" and st["done"] == 60
    png = sorted(env.holdout)[0].read_bytes()
    assert httpx.get(f"{base}/healthz").status_code == 200
    served = httpx.post(f"{base}/classify?collection=shapes", files={"image": ("q.png", png)})
    assert served.status_code == 200 and served.json()["neighbors"]
    busy = httpx.post(f"{base}/classify?collection=added", files={"image": ("q.png", png)})
    assert busy.status_code == 503 and busy.headers["retry-after"]
    assert busy.json()["error"]["code"] == "index_building"
    assert "building its search index" in busy.json()["error"]["message"]
    gate.set()
    for _ in range(600):
        st = httpx.get(f"{base}/admin/index", headers=auth).json()
        if st["state"] != "running":
            break
        time.sleep(0.1)
    assert st["state"] == "done" and st["stage"] == "done", st
    r = httpx.post(f"{base}/classify?collection=added", files={"image": ("q.png", png)})
    assert r.status_code == 200 and r.json()["neighbors"]
