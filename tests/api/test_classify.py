import base64

import pytest

from core.knn import knn_vote
from tests.api.conftest import engine_for, index_into


def _file(data: bytes) -> dict:
    return {"image": ("q.png", data, "image/png")}


def test_vote_over_labelled_neighbours(client, png_bytes):
    r = client.post("/classify?k=7&temperature=0.1", files=_file(png_bytes(3)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["neighbors"]) == 7 and body["collection"] == "shapes"
    scores = [n["score"] for n in body["neighbors"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert sum(body["scores"].values()) == pytest.approx(1.0)
    assert body["label"] == max(body["scores"], key=body["scores"].get)
    assert body["confidence"] == pytest.approx(body["scores"][body["label"]])
    # The answer is exactly the vote over the neighbours it reports.
    vote = knn_vote(scores, [n["label"] for n in body["neighbors"]], 0.1)
    assert body["scores"] == pytest.approx(vote.scores)
    assert all(n["uri"] and n["id"] for n in body["neighbors"])


def test_parameters_as_form_fields_and_json_keys(client, png_bytes):
    by_form = client.post("/classify", files=_file(png_bytes(3)), data={"k": "4"})
    assert len(by_form.json()["neighbors"]) == 4
    b64 = base64.b64encode(png_bytes(3)).decode()
    by_json = client.post("/classify", json={"image": b64, "k": 5, "collection": "shapes"})
    assert len(by_json.json()["neighbors"]) == 5
    # The query string wins over the body.
    both = client.post("/classify?k=2", files=_file(png_bytes(3)), data={"k": "4"})
    assert len(both.json()["neighbors"]) == 2
    bad = client.post("/classify", files=_file(png_bytes(3)), data={"temperature": "0"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"


def test_collection_errors(client, png_bytes):
    unknown = client.post("/classify?collection=nope", files=_file(png_bytes(0)))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_collection"
    unlabelled = client.post("/classify?collection=nolabels", files=_file(png_bytes(0)))
    assert unlabelled.status_code == 409 and unlabelled.json()["error"]["code"] == "no_labels"
    stale = client.post("/classify?collection=stale", files=_file(png_bytes(0)))
    assert stale.status_code == 409
    err = stale.json()["error"]
    assert err["code"] == "model_version_mismatch" and "19990101-000000-old" in err["message"]
    bad_name = client.post("/classify?collection=a__b", files=_file(png_bytes(0)))
    assert bad_name.status_code == 422


def test_accuracy_on_held_out_images(tiny_package, tmp_path, make_client):
    """An untrained tiny ViT still separates the synthetic classes by colour well above chance;
    the held-out queries are not in the index."""
    from indexer.sources import list_source
    from training.synthetic import CLASSES, make_synthetic

    memory = make_synthetic(tmp_path / "memory", 30, 32, seed=11)
    queries = make_synthetic(tmp_path / "queries", 10, 32, seed=12)
    index_into(tmp_path / "q", engine_for(tiny_package), "train", list_source(memory, "dirs"))
    client = make_client(model=str(tiny_package), qdrant_path=tmp_path / "q", collection="train")
    right = total = 0
    for path in sorted(queries.rglob("*.png")):
        r = client.post("/classify", files=_file(path.read_bytes()))
        assert r.status_code == 200, r.text
        right += r.json()["label"] == path.parent.name
        total += 1
    accuracy = right / total
    print(f"k-NN accuracy of the untrained tiny ViT on held-out images: {accuracy:.3f}")
    # Measured 0.29 (0.29–0.31 over init seeds 0–2); chance is 0.10.
    assert accuracy >= 2 / len(CLASSES)
