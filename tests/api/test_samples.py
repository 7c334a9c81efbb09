"""`GET /samples`: the page's example images with their true masks, served by name only."""

from __future__ import annotations

import pytest
from PIL import Image

from core.samples import list_samples
from core.settings import Settings
from training.scenes import make_scenes


@pytest.fixture
def samples_dir(tmp_path):
    return make_scenes(tmp_path / "queries", 2, seed=3)


def test_samples_take_one_class_at_a_time_with_their_masks(samples_dir):
    listed = list_samples(samples_dir)
    assert len(listed) == 20
    assert [s.label for s in listed[:10]] == sorted({s.label for s in listed})
    assert listed[0].name == "circle/00000.png" and listed[10].name == "circle/00001.png"
    assert all(s.mask is not None and s.mask.is_file() for s in listed)


def test_the_route_lists_and_serves_images_and_masks(make_client, samples_dir):
    c = make_client(samples_dir=samples_dir)
    body = c.get("/samples").json()
    first = body["results"][0]
    assert first == {
        "name": "circle/00000.png",
        "label": "circle",
        "image": "/samples/circle/00000.png",
        "mask": "/samples/circle/00000.png?mask=true",
    }
    img = c.get(first["image"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == (samples_dir / "circle" / "00000.png").read_bytes()
    mask = c.get(first["mask"])
    assert mask.status_code == 200
    assert mask.content == (samples_dir.parent / "queries-masks/circle/00000.png").read_bytes()


@pytest.mark.parametrize(
    "path", ["/samples/../queries-masks/circle/00000.png", "/samples/nope.png", "/samples/%2e%2e/x"]
)
def test_only_listed_names_are_served(make_client, samples_dir, path):
    c = make_client(samples_dir=samples_dir)
    r = c.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] in ("unknown_sample", "not_found")


def test_a_sample_without_a_mask_says_so(make_client, tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    c = make_client(samples_dir=tmp_path / "flat")
    assert c.get("/samples").json()["results"] == [
        {"name": "a.png", "label": None, "image": "/samples/a.png", "mask": None}
    ]
    r = c.get("/samples/a.png?mask=true")
    assert r.status_code == 404 and "has no mask" in r.json()["error"]["message"]


def test_no_samples_configured_is_an_empty_list(make_client):
    c = make_client()
    assert c.get("/samples").json() == {"results": []}


def test_a_missing_samples_folder_stops_the_start(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        Settings(samples_dir=tmp_path / "missing")
