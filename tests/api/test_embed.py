import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.package import read_meta


def test_multipart_several_images(client, png_bytes, micro_package):
    files = [("images", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    r = client.post("/embed", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    meta = read_meta(micro_package)
    assert body["model_version"] == meta.version and body["dim"] == meta.embed_dim
    assert body["count"] == 3 and len(body["embeddings"]) == 3
    np.testing.assert_allclose(np.linalg.norm(body["embeddings"], axis=1), 1.0, atol=1e-5)


def test_json_base64_gives_the_same_embeddings_in_order(client, png_bytes):
    pics = [png_bytes(5), png_bytes(40)]
    r = client.post("/embed", json={"images": [base64.b64encode(p).decode() for p in pics]})
    assert r.status_code == 200, r.text
    files = [("images", ("a.png", p, "image/png")) for p in pics]
    multipart = client.post("/embed", files=files).json()["embeddings"]
    np.testing.assert_allclose(r.json()["embeddings"], multipart, atol=1e-5)
    one = client.post("/embed", files=[("images", ("b.png", pics[1], "image/png"))]).json()
    np.testing.assert_allclose(one["embeddings"][0], multipart[1], atol=1e-5)


def test_data_url_and_single_image_field(client, png_bytes):
    url = "data:image/png;base64," + base64.b64encode(png_bytes(1)).decode()
    assert client.post("/embed", json={"image": url}).json()["count"] == 1
    r = client.post("/embed", files={"image": ("x.png", png_bytes(1), "image/png")})
    assert r.status_code == 200 and r.json()["count"] == 1


def _batch_stats(client) -> tuple[float, float]:
    lines = client.get("/metrics").text.splitlines()
    value = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in lines if ln.startswith("dino")}
    return value['dinoserve_batch_size_count{op="embed"}'], value[
        'dinoserve_batch_size_sum{op="embed"}'
    ]


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_are_coalesced_unless_switched_off(make_client, png_bytes, batching):
    c = make_client(serve={"batching": batching, "max_wait_ms": 100, "max_batch": 32})
    requests = 12

    def post(i: int) -> list[float]:
        r = c.post("/embed", files=[("images", ("a.png", png_bytes(i), "image/png"))])
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]

    with ThreadPoolExecutor(requests) as pool:
        together = list(pool.map(post, range(requests)))
    calls, images = _batch_stats(c)
    assert images == requests
    if batching:
        assert calls < requests  # several requests shared an engine call
    else:
        assert calls == requests
    alone = [post(i) for i in (0, 7)]  # same answers as when batched with others
    np.testing.assert_allclose([together[0], together[7]], alone, atol=1e-5)
