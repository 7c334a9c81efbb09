import pytest

from core import store


def _uri(synthetic_dir, i: int = 0) -> str:
    return str(sorted(synthetic_dir.rglob("*.png"))[i].resolve())


def test_get_by_id_excludes_the_query(client, synthetic_dir):
    pid = store.point_id(_uri(synthetic_dir, 7))
    r = client.get(f"/search?image={pid}&k=5")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5 and pid not in {x["id"] for x in results}
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    assert set(results[0]) == {"id", "score", "uri", "label"}


def test_get_by_uri_and_label_filter(client, synthetic_dir):
    uri = _uri(synthetic_dir, 7)
    by_uri = client.get("/search", params={"image": uri, "k": 4}).json()["results"]
    by_id = client.get("/search", params={"image": store.point_id(uri), "k": 4}).json()["results"]
    assert [x["id"] for x in by_uri] == [x["id"] for x in by_id]
    only = client.get("/search", params={"image": uri, "k": 50, "label": "star"}).json()
    assert len(only["results"]) == 12 and {x["label"] for x in only["results"]} == {"star"}


def test_post_an_indexed_image_finds_itself_first(client, synthetic_dir):
    path = sorted(synthetic_dir.rglob("*.png"))[3]
    r = client.post("/search?k=3", files={"image": ("x.png", path.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["uri"] == str(path.resolve()) and top["score"] == pytest.approx(1.0, abs=1e-4)
    labelled = client.post(
        "/search",
        files={"image": ("x.png", path.read_bytes(), "image/png")},
        data={"label": "ring", "k": "2"},
    ).json()["results"]
    assert len(labelled) == 2 and {x["label"] for x in labelled} == {"ring"}


def test_search_errors(client, synthetic_dir):
    missing = client.get("/search?image=/not/indexed.png")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_image"
    assert client.get("/search").status_code == 422  # image is required
    assert client.get(f"/search?image={_uri(synthetic_dir)}&k=0").status_code == 422
    assert client.get(f"/search?image={_uri(synthetic_dir)}&k=1001").status_code == 422
    unknown = client.get(f"/search?image={_uri(synthetic_dir)}&collection=nope")
    assert unknown.status_code == 404
    stale = client.get(f"/search?image={_uri(synthetic_dir)}&collection=stale")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "model_version_mismatch"


def test_get_by_a_path_relative_to_the_working_directory(client, synthetic_dir, monkeypatch):
    uri = _uri(synthetic_dir, 7)
    monkeypatch.chdir(synthetic_dir.parent)  # the service's working directory
    relative = str(sorted(synthetic_dir.rglob("*.png"))[7].relative_to(synthetic_dir.parent))
    r = client.get("/search", params={"image": relative, "k": 4})
    assert r.status_code == 200, r.text
    by_uri = client.get("/search", params={"image": uri, "k": 4}).json()["results"]
    assert [x["id"] for x in r.json()["results"]] == [x["id"] for x in by_uri]
    gone = client.get("/search", params={"image": "not/indexed.png"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_image"


def test_unknown_collection_lists_the_existing_ones(client):
    r = client.get("/search", params={"image": "x", "collection": "typo"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == (
        "no collection named 'typo'; collections: nolabels, shapes, stale"
    )
