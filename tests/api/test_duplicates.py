"""GET /collections/{name}/duplicates: copies group, pages come from one computation, writes
make the next request compute afresh, errors in the one shape."""

from __future__ import annotations

import base64

import pytest

from tests.api.test_collections import noise_png

URL = "/collections/{}/duplicates"


@pytest.fixture
def app(make_client, tmp_path):
    return make_client(blob_dir=tmp_path / "blobs")


def dups(c, name: str = "shapes", **params) -> dict:
    r = c.get(URL.format(name), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def add(c, name: str, images: list[bytes], uris: list[str]) -> list[str]:
    body = {"images": [base64.b64encode(i).decode() for i in images], "uris": uris}
    r = c.post(f"/collections/{name}/images", json=body)
    assert r.status_code == 200, r.text
    return r.json()["ids"]


def members(group: dict) -> set[str]:
    return {m["id"] for m in group["members"]}


def test_exact_copies_group_and_writes_invalidate_the_cache(app):
    assert app.post("/collections/dups").status_code == 201
    originals = add(app, "dups", [noise_png(s) for s in range(6)], [f"n{s}" for s in range(6)])
    copies = add(app, "dups", [noise_png(0), noise_png(0)], ["copy-a", "copy-b"])
    # Threshold 1: identical embeddings only (this barely trained model puts other images
    # close together; the default threshold is for a real backbone).
    first = dups(app, "dups", threshold=1.0)
    assert first["points"] == 8 and first["total_groups"] == 1 and first["duplicated"] == 3
    (group,) = first["groups"]
    assert members(group) == {originals[0], *copies}
    assert group["min_edge"] == pytest.approx(1.0, abs=1e-5)
    assert len({m["uri"] for m in group["members"]}) == 1  # the same bytes, one blob
    assert dups(app, "dups", threshold=1.0)["seconds"] == first["seconds"]  # cached

    (third,) = add(app, "dups", [noise_png(0)], ["copy-c"])
    assert members(dups(app, "dups", threshold=1.0)["groups"][0]) == {originals[0], *copies, third}

    # A relabel keeps the point count: still seen.
    r = app.patch(f"/collections/dups/images/{third}", json={"label": "twin"})
    assert r.status_code == 200, r.text
    labels = {m["id"]: m["label"] for m in dups(app, "dups", threshold=1.0)["groups"][0]["members"]}
    assert labels[third] == "twin"

    for pid in (third, copies[0]):
        assert app.delete(f"/collections/dups/images/{pid}").status_code == 200
    after = dups(app, "dups", threshold=1.0)
    assert [members(g) for g in after["groups"]] == [{originals[0], copies[1]}]


def test_pages_come_from_one_computation(client):
    whole = dups(client, threshold=0.999, limit=500)
    assert whole["total_groups"] >= 3
    sizes = [g["size"] for g in whole["groups"]]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 2
    assert whole["duplicated"] == sum(sizes)
    paged = []
    for offset in range(0, whole["total_groups"] + 2, 2):
        page = dups(client, threshold=0.999, offset=offset, limit=2)
        assert page["seconds"] == whole["seconds"] and page["offset"] == offset
        paged += page["groups"]
    assert paged == whole["groups"]
    for g in whole["groups"]:
        sims = [m["similarity"] for m in g["members"]]
        assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims == sorted(sims, reverse=True)
        assert g["min_similarity"] == pytest.approx(sims[-1], abs=1e-6)
        assert g["min_edge"] >= 0.999 - 1e-6


def test_default_threshold_is_the_setting(make_client):
    c = make_client(discovery={"duplicate_threshold": 0.999, "duplicate_k": 5})
    body = dups(c)
    assert body["threshold"] == 0.999 and body["k"] == 5
    assert body["total_groups"] == dups(c, threshold=0.999)["total_groups"]


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/collections/nope/duplicates", 404, "unknown_collection"),
        ("/collections/shapes/duplicates?threshold=0", 422, "invalid_parameter"),
        ("/collections/shapes/duplicates?threshold=1.5", 422, "invalid_parameter"),
        ("/collections/shapes/duplicates?threshold=nan", 422, "invalid_parameter"),
        ("/collections/shapes/duplicates?limit=0", 422, "invalid_parameter"),
        ("/collections/shapes/duplicates?offset=-1", 422, "invalid_parameter"),
        ("/collections/shapes/duplicates?treshold=0.9", 422, "invalid_parameter"),
        ("/collections/sh__apes/duplicates", 422, "invalid_collection"),
    ],
)
def test_errors_have_the_one_shape(client, path, status, code):
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_documented_with_an_example(client):
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/collections/{name}/duplicates"]["get"]
    assert {"404", "422"} <= set(op["responses"])
    schema = doc["components"]["schemas"]["DuplicatesResponse"]
    assert schema["examples"][0]["groups"][0]["members"]
