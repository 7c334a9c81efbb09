"""Every error leaves in one shape, with the status the issue's mapping gives it."""

import base64
import io

import pytest
from PIL import Image


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "white").save(out, "PNG")  # compresses to almost nothing
    return out.getvalue()


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_framework_errors_share_the_shape(client):
    _error(client.get("/nope"), 404, "not_found")
    r = client.get("/embed")
    _error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    _error(client.get("/search?image=x&k=abc"), 422, "invalid_parameter")


def test_wrong_content_types(client):
    _error(
        client.post("/embed", content=b"hello", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _error(client.post("/embed"), 415, "unsupported_media_type")
    _error(
        client.post("/classify", content=b"{", headers={"content-type": "application/json"}),
        422,
        "invalid_json",
    )
    _error(client.post("/embed", json=[1, 2]), 422, "invalid_json")
    _error(client.post("/embed", json={"images": ["***"]}), 422, "invalid_base64")
    _error(client.post("/embed", json={"images": "abc"}), 422, "invalid_json")
    _error(client.post("/embed", json={}), 422, "no_image")
    _error(client.post("/embed", files={"other": ("a.png", _png((4, 4)))}), 422)
    _error(
        client.post(
            "/embed",
            content=b"--x\r\nbroken",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        422,
    )


def test_bad_images(client, png_bytes):
    good = png_bytes(0)
    _error(client.post("/embed", files={"images": ("a.png", b"")}), 422, "empty_image")
    err = _error(
        client.post("/embed", files={"images": ("a.png", b"not an image")}), 422, "invalid_image"
    )
    assert "BytesIO" not in err["message"] and " at 0x" not in err["message"]
    assert err["message"].startswith("not a readable image")
    _error(
        client.post("/classify", files={"image": ("a.png", good[: len(good) // 3])}),
        422,
        "invalid_image",
    )
    files = [("images", ("a.png", good)), ("images", ("b.png", b"junk"))]
    err = _error(client.post("/embed", files=files), 422, "invalid_image")
    assert err["message"].startswith("b.png: not a readable image")  # the file, by its name
    b64 = base64.b64encode(good).decode()
    err = _error(client.post("/embed", json={"images": [b64, "anVuaw=="]}), 422, "invalid_image")
    assert err["message"].startswith("images[1]: ")
    two = [("image", ("a.png", good)), ("image", ("b.png", good))]
    _error(client.post("/classify", files=two), 422, "one_image")


def test_size_limits(make_client, png_bytes):
    c = make_client(max_upload_bytes=20_000, max_pixels=250_000, max_batch_images=2)
    big = b"\x00" * 40_000
    # The declared length is checked before anything is read…
    err = _error(c.post("/embed", files={"images": ("a.png", big)}), 413, "upload_too_large")
    per_request = "over the limit of 20000 bytes of images per request (DINOSERVE_MAX_UPLOAD_BYTES)"
    assert per_request in err["message"]
    # …and the bytes actually received when there is no length (chunked).
    r = c.post(
        "/embed",
        content=iter([b"x" * 30_000] * 5),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert per_request in _error(r, 413, "upload_too_large")["message"]
    # base64 may be 4/3 larger on the wire, but the image bytes still count.
    b64 = base64.b64encode(b"\x00" * 19_000).decode()
    err = _error(c.post("/embed", json={"images": [b64, b64]}), 413, "upload_too_large")
    assert (
        err["message"] == f"38000 bytes of images is {per_request}; send fewer or smaller "
        "images per request"
    )
    files = [("images", ("a.png", png_bytes(i))) for i in range(3)]
    err = _error(c.post("/embed", files=files), 413, "too_many_images")
    assert "2 images per request (DINOSERVE_MAX_BATCH_IMAGES)" in err["message"]
    # A decompression bomb: a tiny file of 1000×1000 pixels, refused from its header.
    bomb = _png((1000, 1000))
    assert len(bomb) < 20_000
    err = _error(c.post("/embed", files={"images": ("a.png", bomb)}), 413, "image_too_large")
    assert "250000 pixels per image (DINOSERVE_MAX_PIXELS)" in err["message"]
    assert c.post("/embed", files={"images": ("a.png", _png((400, 400)))}).status_code == 200


def test_qdrant_unreachable_is_503_with_retry_after(make_client, png_bytes):
    c = make_client(qdrant_url="http://127.0.0.1:9", serve={"store_attempts": 1})
    r = c.get("/search?image=x")
    _error(r, 503, "store_unavailable")
    assert r.headers["retry-after"] == "5"
    _error(c.post("/classify", files={"image": ("a.png", png_bytes(0))}), 503)
    assert c.post("/embed", files={"images": ("a.png", png_bytes(0))}).status_code == 200


def test_unexpected_errors_are_500_in_the_same_shape(make_client, png_bytes, monkeypatch, caplog):
    import api.routes.classify

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(api.routes.classify, "knn_vote", broken)
    c = make_client(raise_server_exceptions=False)
    err = _error(
        c.post("/classify", files={"image": ("a.png", png_bytes(0))}), 500, "internal_error"
    )
    assert "boom" not in err["message"]  # no internals leak
    assert "boom" in caplog.text
    assert 'status="500"' in c.get("/metrics").text


@pytest.mark.parametrize("query", ["k=0", "temperature=11", "temperature=-1", "collection=a b"])
def test_scalar_parameter_ranges(client, png_bytes, query):
    r = client.post(f"/classify?{query}", files={"image": ("a.png", png_bytes(0))})
    _error(r, 422, "invalid_parameter")


def test_route_dependencies_raise_domain_errors_that_the_table_answers(make_settings):
    """api/deps.py builds no HTTP error: an app used without its lifespan (`NotStarted`) and a
    query parameter given twice (`BadUpload`) are answered by api/errors.py's table."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    bare = TestClient(create_app(make_settings()))  # no `with`: the lifespan never runs
    r = bare.get("/search?image=x")
    _error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "5"
    err = _error(bare.get("/search?image=x&k=1&k=2"), 422, "invalid_parameter")
    assert err["message"] == "parameter given more than once: 'k'"
