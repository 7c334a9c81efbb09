"""Acceptance: a real uvicorn service under a steady load of /search and /classify while a
refresh and then a rollback run — no failed request, every answer consistent (the query's model
version is the searched collection's), answers from the new model after the refresh and from
the old one after the rollback."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.refresh.conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Answer:
    started: float
    status: int
    version: str | None
    physical: str | None
    error: str = ""


def _load(base: str, request, answers: list[Answer], stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        while not stop.is_set():
            t = time.monotonic()
            try:
                r = request(http)
                body = r.json()
                version, physical = body.get("model_version"), body.get("physical_collection")
                answers.append(Answer(t, r.status_code, version, physical, r.text[:300]))
            except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                answers.append(Answer(t, 0, None, None, repr(exc)))


def _until(base: str, path: str, done, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while not done(body := httpx.get(base + path, headers=AUTH).json()):
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


@pytest.fixture
def server(env, start_server):
    return start_server(env.settings(admin_api_key=ADMIN_KEY))


def test_refresh_and_rollback_under_load(env, server):
    indexed = sorted(env.images.rglob("*.png"))
    query = env.holdout[0].read_bytes()
    loads = [
        lambda h: h.get("/search", params={"image": str(indexed[3]), "k": 5}),
        lambda h: h.post(
            "/classify", params={"k": 5}, files={"image": ("q.png", query, "image/png")}
        ),
        lambda h: h.post("/search", files={"image": ("q.png", query, "image/png")}),
    ]
    answers: list[list[Answer]] = [[] for _ in loads]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(server, fn, out, stop), daemon=True)
        for fn, out in zip(loads, answers, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        _until(server, "/admin/refresh", lambda _: all(len(a) >= 3 for a in answers))
        r = httpx.post(server + "/admin/refresh", headers=AUTH)
        assert r.status_code == 202, r.text
        refresh_started = time.monotonic()
        st = _until(server, "/admin/refresh", lambda b: b["state"] != "running")
        refreshed = time.monotonic()
        assert st["state"] == "done", st
        time.sleep(1.0)
        rollback_started = time.monotonic()
        back = httpx.post(server + "/admin/rollback", headers=AUTH, timeout=60)
        assert back.status_code == 200, back.text
        rolled_back = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    every = [a for per in answers for a in per]
    failed = [a for a in every if a.status != 200]
    assert not failed, failed[:5]
    for a in every:  # the query's model is the collection's model
        assert a.physical == f"shapes__{a.version}", a
    during = [a for a in every if refresh_started <= a.started < refreshed]
    assert during, "the load ran while the refresh did"
    print(f"{len(every)} requests, {len(during)} during the refresh")
    assert {a.version for a in every if a.started < refresh_started} == {env.v1}
    assert {a.version for a in every if refreshed <= a.started < rollback_started} == {env.v2}
    assert {a.version for a in every if a.started >= rolled_back} == {env.v1}
    for per in answers:  # each kind of request saw both models
        assert {a.version for a in per} == {env.v1, env.v2}
