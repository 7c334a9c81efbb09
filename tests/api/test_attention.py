import io

import numpy as np
import pytest
from PIL import Image

from core.package import read_meta


def _file(data: bytes) -> dict:
    return {"image": ("q.png", data, "image/png")}


def test_json_maps_and_masks(client, png_bytes, micro_package):
    meta = read_meta(micro_package)
    r = client.post("/attention?threshold=0.5", files=_file(png_bytes(2)))
    assert r.status_code == 200, r.text
    body = r.json()
    att, mask = np.asarray(body["attention"]), np.asarray(body["mask"])
    assert att.shape == mask.shape == (meta.num_heads, *meta.grid)
    assert body["grid"] == list(meta.grid) and body["heads"] == meta.num_heads
    assert body["image_size"] == [32, 32] and body["patch_size"] == meta.patch_size
    assert body["smooth"] == meta.views.smooth == 0  # the micro package does not smooth its map
    np.testing.assert_allclose(att.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert all(0.5 <= m <= 1.0 for m in body["kept_mass"])
    assert mask.dtype == bool


def test_png_picture(client, png_bytes, micro_package):
    meta = read_meta(micro_package)
    r = client.post("/attention", files=_file(png_bytes(2)), data={"format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    tile = max(meta.img_size, 128)
    gap = 4
    cols = meta.num_heads + 1
    assert img.size == (cols * tile + (cols - 1) * gap, 2 * tile + gap)
    assert np.asarray(img).std() > 5  # not blank


@pytest.mark.parametrize("query", ["threshold=0", "threshold=1.5", "format=gif"])
def test_bad_parameters(client, png_bytes, query):
    r = client.post(f"/attention?{query}", files=_file(png_bytes(0)))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
