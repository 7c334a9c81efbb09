"""Acceptance: writes to a collection over HTTP, interleaved with searches, while a refresh
re-embeds it and flips, and then a rollback: none is lost (the exact point set and labels
after), no request fails (a write refused during the flip says 409 + Retry-After and goes
through when retried)."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from api.main import create_app
from core import store
from core.blobs import Blobs, blob_uri
from tests.api.test_browser import _free_port
from tests.api.test_collections import noise_png
from tests.refresh.conftest import ADMIN_KEY
from tests.servers import loopback_server
from tests.stores import all_points, edge_store

WRITE_KEY = "refresh-write-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WRITE = {"X-API-Key": WRITE_KEY}
N_WRITES = 200
WRITERS_DEADLINE_S = 900  # a bound for a hung writer, far beyond a loaded run's minutes
SWITCH_DEADLINE_S = 300  # a bound for a switch that never ends


@dataclass
class Log:
    """What the clients saw."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[tuple[float, float]] = field(default_factory=list)  # writes: (sent, answered)
    refused: int = 0  # 409 collection_switching, retried
    failed: list[str] = field(default_factory=list)
    reads: int = 0


def _write(http: httpx.Client, op: Callable[[httpx.Client], httpx.Response], log: Log) -> None:
    """One write, retried while the collections switch (as a client should), for as long as
    the switch takes: the gate stays closed for a catch-up pass and a flip, under a second on
    an idle machine but several on a loaded one (a fixed count of 50 quick retries gave up
    there: the flaky failure this deadline replaces)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SWITCH_DEADLINE_S:
        r = op(http)
        if r.status_code == 409 and r.json()["error"]["code"] == "collection_switching":
            assert r.headers["Retry-After"]
            with log.lock:
                log.refused += 1
            time.sleep(0.05)  # Retry-After is 1 s; a test need not wait that long
            continue
        with log.lock:
            if r.status_code == 200:
                log.done.append((t0, time.monotonic()))
            else:
                log.failed.append(f"{r.status_code} {r.text[:300]}")
        return
    log.failed.append(f"still refused after {SWITCH_DEADLINE_S} s")


def _add(data: bytes, label: str) -> Callable[[httpx.Client], httpx.Response]:
    files = {"image": ("x.png", data, "image/png")}
    return lambda h: h.post(
        "/collections/shapes/images", params={"label": label}, files=files, headers=WRITE
    )


class Service:
    def __init__(self, settings) -> None:
        port = _free_port()
        serve = settings.serve.model_copy(update={"port": port})
        self.url = f"http://127.0.0.1:{port}"
        app = create_app(settings.model_copy(update={"serve": serve}))
        self.server = loopback_server(app, port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _wait_refresh(url: str, timeout: float = 600) -> dict:  # a bound for a hang only
    deadline = time.monotonic() + timeout
    while (st := httpx.get(url + "/admin/refresh", headers=ADMIN).json())["state"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    return st


def test_concurrent_writes_during_a_refresh_and_a_rollback_lose_nothing(env, tmp_path):
    blob_dir = tmp_path / "blobs"
    settings = env.settings(admin_api_key=ADMIN_KEY, write_api_key=WRITE_KEY, blob_dir=blob_dir)
    indexed = sorted(p for p in env.images.resolve().rglob("*.png"))
    expected = {store.point_id(str(p)): p.parent.name for p in indexed}
    ids = sorted(expected)
    ops: queue.Queue = queue.Queue()
    n_add = 0

    def add_one(i: int) -> None:
        data, label = noise_png(1000 + i), f"new{i % 3}"
        expected[store.point_id(blob_uri(hashlib.sha256(data).hexdigest()))] = label
        ops.put(_add(data, label))

    for pid in ids[:20]:  # relabel
        expected[pid] = "relabelled"
        ops.put(
            lambda h, p=pid: h.patch(
                f"/collections/shapes/images/{p}", json={"label": "relabelled"}, headers=WRITE
            )
        )
    for pid in ids[20:25]:  # remove the label
        expected[pid] = None
        ops.put(
            lambda h, p=pid: h.patch(
                f"/collections/shapes/images/{p}", json={"label": None}, headers=WRITE
            )
        )
    for pid in ids[25:45]:  # delete
        del expected[pid]
        ops.put(lambda h, p=pid: h.delete(f"/collections/shapes/images/{p}", headers=WRITE))
    while ops.qsize() < N_WRITES:
        add_one(n_add)
        n_add += 1
    # Shuffle adds between the others, deterministically.
    pending = [ops.get() for _ in range(ops.qsize())]
    order = sorted(range(len(pending)), key=lambda i: (i * 7919) % len(pending))
    for i in order:
        ops.put(pending[i])

    svc = Service(settings)
    log, stop_reads = Log(), threading.Event()
    refresh_window: list[float] = []
    gen_lock = threading.Lock()

    def writer() -> None:
        nonlocal n_add
        with httpx.Client(base_url=svc.url, timeout=60) as http:
            while True:
                try:
                    op = ops.get_nowait()
                except queue.Empty:
                    # Keep writing until the refresh has finished, so writes straddle it.
                    if len(refresh_window) == 2:
                        return
                    with gen_lock:
                        add_one(n_add)
                        n_add += 1
                    continue
                _write(http, op, log)

    def reader() -> None:
        query = env.holdout[0].read_bytes()
        with httpx.Client(base_url=svc.url, timeout=60) as http:
            while not stop_reads.is_set():
                for r in (
                    http.post("/search?k=5", files={"image": ("q.png", query, "image/png")}),
                    http.post("/classify", files={"image": ("q.png", query, "image/png")}),
                ):
                    with log.lock:
                        log.reads += 1
                        if r.status_code != 200:
                            log.failed.append(f"read {r.status_code} {r.text[:300]}")

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(6)]
    threads.append(threading.Thread(target=reader, daemon=True))
    try:
        for t in threads:
            t.start()
        while len(log.done) < 30:
            time.sleep(0.01)
        r = httpx.post(svc.url + "/admin/refresh", headers=ADMIN)
        assert r.status_code == 202, r.text
        refresh_window.append(time.monotonic())
        st = _wait_refresh(svc.url)
        refresh_window.append(time.monotonic())
        assert st["state"] == "done", st
        # The writers end once the queue is empty (they stop adding when the refresh is done).
        # Wait for that, not for a fixed time: on a loaded machine the writes queued before the
        # refresh ended can take minutes, and counting while some are in flight would be wrong.
        writers_done = time.monotonic() + WRITERS_DEADLINE_S
        for t in threads[:-1]:
            t.join(timeout=max(0.0, writers_done - time.monotonic()))
        assert not any(t.is_alive() for t in threads[:-1]), "writers still running"
        assert not log.failed, log.failed[:5]  # a write that failed is not in the store
        # After the refresh: the served collection holds every write, by the new model.
        now = httpx.get(svc.url + "/collections/shapes").json()
        assert now["physical_collection"] == f"shapes__{env.v2}"
        assert now["points"] == len(expected)
        assert now["labelled"] == sum(v is not None for v in expected.values())
        # A few writes under v2, then a rollback: they must survive it too.
        with httpx.Client(base_url=svc.url, timeout=60) as http:
            for _ in range(5):
                add_one(n_add)
                n_add += 1
                _write(http, ops.get(), log)
        back = httpx.post(svc.url + "/admin/rollback", headers=ADMIN, timeout=120)
        assert back.status_code == 200, back.text
    finally:
        stop_reads.set()
        for t in threads:
            t.join(timeout=60)
        svc.stop()

    assert not log.failed, log.failed[:5]
    during = [d for d in log.done if refresh_window[0] <= d[0] and d[1] <= refresh_window[1]]
    print(
        f"{len(log.done)} writes ({len(during)} during the refresh, {log.refused} refused "
        f"and retried while it flipped), {log.reads} reads"
    )
    assert len(log.done) >= N_WRITES + 5 and during, "the writes ran while the refresh did"
    db = edge_store(env.qdrant_path)
    try:
        assert db.resolve_alias("shapes") == f"shapes__{env.v1}"
        for version in (env.v2, env.v1):  # served after the refresh, then after the rollback
            points = all_points(db, f"shapes__{version}")
            assert {p: v.get("label") for p, v in points.items()} == expected, version
            assert {v["model_version"] for v in points.values()} == {version}
    finally:
        db.close()
    blobs = Blobs(blob_dir)
    uploaded = [v for v in points.values() if str(v["uri"]).startswith("blob://")]
    assert len(uploaded) == n_add and all(blobs.exists(v["sha256"]) for v in uploaded)
