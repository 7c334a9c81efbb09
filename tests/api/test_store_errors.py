"""Store failures at the API boundary: a full disk is 507 with the one error shape (reads that
do not write go on), a store that cannot be reached is 503."""

from __future__ import annotations

from core.store import StoreFull


def test_a_full_store_answers_507_and_other_routes_go_on(make_client, png_bytes):
    c = make_client()
    db = c.app_state["runtime"].vectors.db

    def full(*args, **kwargs):
        raise StoreFull("the disk under the embedded store /x is full: free space there")

    db._search = full  # a write path would raise this; the mapping is the same for any route
    r = c.post("/classify", files={"image": ("q.png", png_bytes(0))})
    assert r.status_code == 507
    assert r.json() == {
        "error": {
            "code": "store_full",
            "message": ("the disk under the embedded store /x is full: free space there"),
        }
    }
    assert c.post("/embed", files={"images": ("q.png", png_bytes(0))}).status_code == 200
    assert c.get("/healthz").status_code == 200
