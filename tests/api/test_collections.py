"""Collections over HTTP: add labelled images, relabel, delete, list; idempotent uploads; the
limits and hostile bodies of /embed; the write key."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from core import store
from core.blobs import Blobs
from tests.security.test_uploads import error


def noise_png(seed: int, size: int = 24) -> bytes:
    """A PNG no other test image resembles (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def files(*images: bytes) -> list:
    return [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


@pytest.fixture
def app(make_client, tmp_path):
    return make_client(blob_dir=tmp_path / "blobs")


def classify(c, data: bytes, **params) -> dict:
    r = c.post("/classify", params=params, files={"image": ("q.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def info(c, name: str = "shapes") -> dict:
    r = c.get(f"/collections/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def test_add_then_classify_uses_the_new_label_at_once(app, tmp_path):
    img = noise_png(1)
    before = info(app)
    r = app.post("/collections/shapes/images?label=zebra", files=files(img))
    assert r.status_code == 200, r.text
    body = r.json()
    (pid,) = body["ids"]
    assert body["model_version"] == body["physical_collection"].split("__")[1]
    vote = classify(app, img, k=1)
    assert vote["label"] == "zebra" and vote["neighbors"][0]["id"] == pid
    after = info(app)
    assert after["points"] == before["points"] + 1
    assert after["labelled"] == before["labelled"] + 1 and after["labels"]["zebra"] == 1
    sha = body["images"][0]["sha256"]
    assert Blobs(tmp_path / "blobs").read(sha) == img  # the bytes are kept
    assert vote["neighbors"][0]["uri"] == f"blob://{sha}"


def test_relabel_changes_the_vote_and_removal_takes_it_out(app):
    img = noise_png(2)
    (pid,) = app.post("/collections/shapes/images", files=files(img), data={"label": "a"}).json()[
        "ids"
    ]
    assert classify(app, img, k=1)["label"] == "a"
    r = app.patch(f"/collections/shapes/images/{pid}", json={"label": "b"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "b"
    assert classify(app, img, k=1)["label"] == "b"
    assert info(app)["labels"].get("a") is None
    r = app.patch(f"/collections/shapes/images/{pid}", json={"label": None})
    assert r.status_code == 200 and r.json()["label"] is None
    vote = classify(app, img, k=5)
    assert pid not in {n["id"] for n in vote["neighbors"]}  # unlabelled: out of the vote
    hits = app.post("/search?k=1", files={"image": ("q.png", img, "image/png")}).json()
    assert hits["results"][0]["id"] == pid  # but still searchable


def test_delete_removes_it_from_search_and_thumbnails(app, tmp_path):
    img = noise_png(3)
    body = app.post("/collections/shapes/images?label=x", files=files(img)).json()
    pid, sha = body["ids"][0], body["images"][0]["sha256"]
    thumb = app.get(f"/images/{pid}?collection=shapes")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    r = app.delete(f"/collections/shapes/images/{pid}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": pid, "collection": "shapes", "deleted": True, "bytes_deleted": True}
    error(app.get(f"/images/{pid}?collection=shapes"), 404, "unknown_image")
    hits = app.post("/search?k=10", files={"image": ("q.png", img, "image/png")}).json()
    assert pid not in {h["id"] for h in hits["results"]}
    assert not Blobs(tmp_path / "blobs").exists(sha)
    error(app.delete(f"/collections/shapes/images/{pid}"), 404, "unknown_image")


def test_bytes_stay_while_another_collection_uses_them(app, tmp_path):
    img = noise_png(4)
    assert app.post("/collections/pets").status_code == 201
    a = app.post("/collections/shapes/images", files=files(img)).json()["ids"][0]
    b = app.post("/collections/pets/images", files=files(img)).json()["ids"][0]
    assert a == b  # content-addressed id, one point per collection
    first = app.delete(f"/collections/shapes/images/{a}").json()
    assert first["bytes_deleted"] is False
    assert app.get(f"/images/{b}?collection=pets").status_code == 200
    assert app.delete(f"/collections/pets/images/{b}").json()["bytes_deleted"] is True


def test_the_same_upload_twice_is_one_point(app, tmp_path):
    img = noise_png(5)
    n = info(app)["points"]
    first = app.post("/collections/shapes/images?label=same", files=files(img)).json()
    again = app.post("/collections/shapes/images?label=same", files=files(img)).json()
    assert first["ids"] == again["ids"] and again["images"][0]["unchanged"] is True
    assert info(app)["points"] == n + 1
    # Sent again with another label: still one point, relabelled (no re-embedding).
    b64 = base64.b64encode(img).decode()
    relabelled = app.post("/collections/shapes/images", json={"images": [b64], "label": "other"})
    assert relabelled.json()["ids"] == first["ids"]
    assert info(app)["points"] == n + 1 and info(app)["labels"]["other"] == 1
    # Twice in one request: one point.
    both = app.post("/collections/shapes/images", files=files(img, img)).json()
    assert len(set(both["ids"])) == 1 and info(app)["points"] == n + 1


def test_a_client_uri_names_the_point_and_replacing_its_bytes_frees_the_old(app, tmp_path):
    blobs = Blobs(tmp_path / "blobs")
    one, two = noise_png(6), noise_png(7)
    r1 = app.post("/collections/shapes/images?uri=user-7/photo.jpg&label=cat", files=files(one))
    pid = r1.json()["ids"][0]
    assert pid == store.point_id("user-7/photo.jpg")
    r2 = app.post("/collections/shapes/images?uri=user-7/photo.jpg&label=cat", files=files(two))
    assert r2.json()["ids"] == [pid] and r2.json()["images"][0]["unchanged"] is False
    assert not blobs.exists(r1.json()["images"][0]["sha256"])
    assert blobs.exists(r2.json()["images"][0]["sha256"])
    # The client's name reaches the point for PATCH and DELETE too.
    r = app.patch("/collections/shapes/images/user-7%2Fphoto.jpg", json={"label": "dog"})
    assert r.status_code == 200 and r.json()["id"] == pid


def test_labels_and_uris_per_image(app):
    imgs = [noise_png(10 + i) for i in range(3)]
    multi = app.post(
        "/collections/shapes/images",
        files=files(*imgs),
        data={"labels": ["p", "", "q"]},
    )
    assert multi.status_code == 200, multi.text
    assert [i["label"] for i in multi.json()["images"]] == ["p", None, "q"]
    b64 = [base64.b64encode(x).decode() for x in imgs]
    js = app.post(
        "/collections/shapes/images",
        json={"images": b64, "labels": ["r", "s", None], "uris": ["u1", "u2", "u3"]},
    )
    assert js.status_code == 200, js.text
    assert js.json()["ids"] == [store.point_id(u) for u in ("u1", "u2", "u3")]
    error(app.post("/collections/shapes/images", json={"images": b64, "labels": ["a"]}), 422)
    error(
        app.post("/collections/shapes/images", json={"images": b64, "labels": "a"}),
        422,
        "invalid_parameter",
    )
    error(app.post("/collections/shapes/images?uri=x", files=files(*imgs)), 422)
    error(
        app.post("/collections/shapes/images?label=a", json={"images": b64, "labels": ["a"] * 3}),
        422,
    )


def test_list_describe_and_create(app):
    r = app.get("/collections")
    assert r.status_code == 200
    by_name = {c["name"]: c for c in r.json()["collections"]}
    assert set(by_name) == {"shapes", "nolabels", "stale"}
    shapes = by_name["shapes"]
    assert shapes["points"] == 120 and shapes["labelled"] == 120
    assert len(shapes["labels"]) == 10 and set(shapes["labels"].values()) == {12}
    assert by_name["nolabels"]["labelled"] == 0 and by_name["nolabels"]["labels"] == {}
    assert by_name["stale"]["model_version"] == "19990101-000000-old"
    created = app.post("/collections/pets")
    assert created.status_code == 201, created.text
    assert created.json()["points"] == 0 and created.json()["physical_collection"].startswith(
        "pets__"
    )
    assert app.post("/collections/pets").status_code == 200  # exists: fine, nothing changes
    error(app.post("/collections/stale"), 409, "collection_exists")
    error(app.get("/collections/nope"), 404, "unknown_collection")
    error(app.get("/collections/a__b"), 422, "invalid_collection")
    error(app.post("/collections/bad%20name"), 422)
    error(app.post("/collections/nope/images", files=files(noise_png(0))), 404)
    stale = app.post("/collections/stale/images", files=files(noise_png(0)))
    error(stale, 409, "model_version_mismatch")


def test_limits_and_hostile_bodies(make_client, tmp_path):
    c = make_client(
        blob_dir=tmp_path / "blobs",
        max_upload_bytes=20_000,
        max_batch_images=2,
        raise_server_exceptions=False,
    )
    url = "/collections/shapes/images"
    error(c.post(url, content=b"x" * 100_000, headers={"content-type": "image/png"}), 415)
    error(c.post(url, files=files(b"\0" * 30_000)), 413)
    error(c.post(url, files=files(*[noise_png(i) for i in range(3)])), 413, "too_many_images")
    error(c.post(url, files=files(b"not an image")), 422, "invalid_image")
    error(c.post(url, files=files(b"")), 422)
    error(c.post(url, json={"images": ["%%%"]}), 422, "invalid_base64")
    error(c.post(url, json={}), 422, "no_image")
    error(c.post(url, content=b"{", headers={"content-type": "application/json"}), 422)
    error(c.post(url, json={"images": [], "label": {"x": 1}}), 422)
    error(c.post(url + "?label=" + "x" * 300, files=files(noise_png(0))), 422)
    error(c.post(url + "?label=a%0Ab", files=files(noise_png(0))), 422)
    error(c.post(url + "?nope=1", files=files(noise_png(0))), 422, "invalid_parameter")
    error(c.post(url, files=files(noise_png(0)), data={"labels": "\x01"}), 422)
    patch = "/collections/shapes/images/" + store.point_id("whatever")
    error(c.patch(patch, json={"label": "a"}), 404, "unknown_image")
    error(c.patch(patch, content=b"label=a", headers={"content-type": "text/plain"}), 415)
    error(c.patch(patch, content=b"{", headers={"content-type": "application/json"}), 422)
    error(c.patch(patch, json={}), 422)
    error(c.patch(patch, json={"label": "a", "more": 1}), 422)
    error(c.patch(patch, json={"label": 7}), 422)
    error(c.patch(patch, json=[1]), 422)
    error(
        c.patch(
            patch,
            content=b'{"label": "' + b"a" * 200_000 + b'"}',
            headers={"content-type": "application/json"},
        ),
        413,
    )
    assert info(c)["points"] == 120  # nothing was written
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]  # no bytes kept


def test_writes_need_the_write_or_admin_key(make_client, tmp_path):
    c = make_client(
        blob_dir=tmp_path / "blobs", api_key="read", write_api_key="write", admin_api_key="admin"
    )
    url = "/collections/shapes/images"
    assert c.get("/collections", headers={"X-API-Key": "read"}).status_code == 200
    assert c.get("/collections", headers={"X-API-Key": "write"}).status_code == 200
    error(c.get("/collections"), 401)
    error(c.post(url, files=files(noise_png(0))), 401)
    error(c.post(url, files=files(noise_png(0)), headers={"X-API-Key": "read"}), 403)
    error(c.post(url, files=files(noise_png(0)), headers={"X-API-Key": "nope"}), 403)
    error(c.post("/collections/pets", headers={"X-API-Key": "read"}), 403)
    # The page's cookie carries no write rights (another site's form could send it).
    c.cookies.set("dinoserve_key", "write")
    error(c.post(url, files=files(noise_png(0))), 401)
    c.cookies.clear()
    ok = c.post(url, files=files(noise_png(0)), headers={"Authorization": "Bearer write"})
    assert ok.status_code == 200, ok.text
    pid = ok.json()["ids"][0]
    error(c.patch(f"{url}/{pid}", json={"label": "x"}, headers={"X-API-Key": "read"}), 403)
    error(c.delete(f"{url}/{pid}", headers={"X-API-Key": "read"}), 403)
    assert c.delete(f"{url}/{pid}", headers={"X-API-Key": "admin"}).status_code == 200


def test_an_admin_key_alone_guards_writes_but_not_reads(make_client, tmp_path):
    c = make_client(blob_dir=tmp_path / "blobs", admin_api_key="admin")
    assert c.get("/collections").status_code == 200
    error(c.post("/collections/pets"), 401)
    assert c.post("/collections/pets", headers={"X-API-Key": "admin"}).status_code == 201


def test_openapi_documents_the_routes_with_examples(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"get"} <= set(paths["/collections"])
    assert {"get", "post"} <= set(paths["/collections/{name}"])
    assert "post" in paths["/collections/{name}/images"]
    assert {"patch", "delete"} <= set(paths["/collections/{name}/images/{image_id}"])
    add = paths["/collections/{name}/images"]["post"]
    assert set(add["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    patch = paths["/collections/{name}/images/{image_id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["examples"]
    schemas = spec["components"]["schemas"]
    for name in ("CollectionInfo", "CollectionList", "AddResponse", "ImageInfo", "Deleted"):
        assert schemas[name].get("examples"), name


def test_the_write_gate_refuses_while_closed_and_waits_for_writes_in_flight():
    import asyncio

    from api.writes import WriteGate, WritesPaused

    async def scenario() -> list[str]:
        gate, events = WriteGate(), []

        async def write() -> None:
            async with gate.entry():
                events.append("write started")
                await asyncio.sleep(0.05)
                events.append("write done")

        async def switch() -> None:
            await asyncio.sleep(0.01)
            async with gate.closed():
                events.append("switching")
                with pytest.raises(WritesPaused):
                    async with gate.entry():
                        pass
            async with gate.entry():  # open again
                events.append("write after")

        await asyncio.gather(write(), switch())
        return events

    assert asyncio.run(scenario()) == ["write started", "write done", "switching", "write after"]


def test_a_labelling_tool_on_another_origin_may_patch_and_delete(make_client, tmp_path):
    c = make_client(blob_dir=tmp_path / "blobs", cors={"allow_origins": ["https://tool.example"]})
    for method in ("PATCH", "DELETE"):
        pre = c.options(
            "/collections/shapes/images/x",
            headers={
                "Origin": "https://tool.example",
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "x-api-key,content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert method in pre.headers["access-control-allow-methods"]
