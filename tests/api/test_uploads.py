"""The multipart reader (api/deps.py): its own limits and errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.conftest import settings_on_copy
from tests.security.test_uploads import error

TYPE = {"content-type": "multipart/form-data; boundary=B"}
FILE = (b'name="images"; filename="a.png"', b"not decoded: refused before")


def body(*parts: tuple[bytes, bytes]) -> bytes:
    """A multipart body with boundary `B` of (Content-Disposition parameters, data) parts."""
    out = b"".join(
        b"--B\r\nContent-Disposition: form-data; " + d + b"\r\n\r\n" + v + b"\r\n" for d, v in parts
    )
    return out + b"--B--\r\n"


@pytest.fixture(scope="module")
def three(micro_package, indexed_store, tmp_path_factory):
    """An app that takes at most 3 images per request."""
    copy = tmp_path_factory.mktemp("qdrant_three") / "q"
    settings = settings_on_copy(micro_package, indexed_store, copy, max_batch_images=3)
    with TestClient(create_app(settings)) as c:
        yield c


CASES = {
    "too many files": (
        [FILE] * 5,
        (413, "too_many_images", "more than 3 images are over the limit of 3 images"),
    ),
    "one file too many": ([FILE] * 4, (413, "too_many_images", "4 images are over the limit")),
    "too many fields": (
        [FILE, *[(b'name="f%d"' % i, b"1") for i in range(65)]],
        (422, "invalid_multipart", "Too many fields. Maximum number of fields is 64."),
    ),
    "a huge field": (
        [FILE, (b'name="k"', b"9" * 65_537)],
        (422, "invalid_multipart", "Part exceeded maximum size of 64KB."),
    ),
    "no name": (
        [(b'filename="a.png"', b"x")],
        (422, "invalid_multipart", 'The Content-Disposition header field "name" must be'),
    ),
    "a file under another name": (
        [(b'name="other"; filename="a.png"', b"x")],
        (422, "unexpected_field", "file field 'other': send images as 'images'"),
    ),
    "a field twice": (
        [FILE, (b'name="x"', b"1"), (b'name="x"', b"2")],
        (422, "invalid_parameter", "field 'x' given twice"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_limits_and_errors(three, case):
    parts, (status, code, message) = CASES[case]
    err = error(three.post("/embed", content=body(*parts), headers=TYPE), status, code)
    assert message in err["message"]


def test_malformed_bodies(three):
    no_boundary = {"content-type": "multipart/form-data"}
    err = error(three.post("/embed", content=body(FILE), headers=no_boundary), 422)
    assert err == {
        "code": "invalid_multipart",
        "message": "malformed multipart body: Missing boundary in multipart.",
    }
    for bad in (b"garbage", b"preamble\r\n" + body(FILE)):
        err = error(three.post("/embed", content=bad, headers=TYPE), 422, "invalid_multipart")
        assert err["message"] == "malformed multipart body: Invalid multipart data."
    # A part cut off before its end is not a part: no image.
    error(three.post("/embed", content=body(FILE)[:-20], headers=TYPE), 422, "no_image")


def test_names_values_and_file_names(three, png_bytes):
    png = png_bytes(0)
    # The body's charset decodes the fields, Latin-1 when it cannot: never an error.
    latin1 = body((b'name="image"; filename="a.png"', png), (b'name="label"', b"caf\xe9"))
    r = three.post("/search", content=latin1, headers=TYPE)
    assert r.status_code == 200 and r.json()["results"] == [], r.text
    # A file without a name is named by its field and place in errors about it.
    parts = [(b'name="images"; filename=""', png), (b'name="images"; filename=""', b"no")]
    err = error(three.post("/embed", content=body(*parts), headers=TYPE), 422, "invalid_image")
    assert err["message"].startswith("images #2: ")
