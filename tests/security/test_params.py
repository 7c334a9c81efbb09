"""Scalar parameters outside their bounds are 4xx in the one shape: in the query string, as
form fields and as JSON keys; names that could reach a file system or Qdrant are refused."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from tests.security.test_uploads import error

BAD = {
    "k": [
        "0",
        "-1",
        "1001",
        "99999999999999999999999",
        "1.5",
        "1e3",
        "abc",
        "",
        "NaN",
        "inf",
        "true",
        "0x10",
    ],
    "temperature": [
        "0",
        "-0.07",
        "10.5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e309",
        "abc",
        "",
        "0x1p-3",
    ],
    "threshold": ["0", "-0.1", "1.01", "nan", "inf", "abc", ""],
    "format": ["jpeg", "PNG ", "", "json\x00"],
    "collection": [
        "",
        "a b",
        "../../etc/passwd",
        "..",
        ".",
        "/etc",
        "a/b",
        "a\\b",
        "%2e%2e",
        "a__b",
        "shapes\n",
        "shapes\x00",
        "shapes\r\n",
        "\u202eshapes",
        "ｓhapes",
        "x" * 64,
        "-leading",
        "_leading",
        "shapes;drop",
        "*",
        "sh*",
        "shapes\t",
    ],
    "label": ["", "x" * 257],
}
ROUTE_OF = {
    "k": "/classify",
    "temperature": "/classify",
    "threshold": "/attention",
    "format": "/attention",
    "collection": "/classify",
    "label": "/search",
}
CASES = [(name, value) for name, values in BAD.items() for value in values]


@pytest.mark.parametrize(("name", "value"), CASES)
def test_out_of_bounds_in_the_query(client, png_bytes, name, value):
    route = ROUTE_OF[name]
    r = client.post(f"{route}?{name}={quote(value)}", files={"image": ("q.png", png_bytes(0))})
    error(r, (404, 422) if name == "collection" else 422)
    if name == "collection":
        assert r.status_code == 422 or r.json()["error"]["code"] == "unknown_collection"


@pytest.mark.parametrize(("name", "value"), CASES)
def test_out_of_bounds_as_form_fields_and_json(client, png_bytes, name, value):
    route = ROUTE_OF[name]
    form = client.post(route, data={name: value}, files={"image": ("q.png", png_bytes(0))})
    error(form, (404, 422))
    image = base64.b64encode(png_bytes(0)).decode()
    error(client.post(route, json={"image": image, name: value}), (404, 422))


@pytest.mark.parametrize("value", BAD["collection"])
def test_collection_names_never_reach_the_store(client, value):
    for path in (
        f"/search?image=x&collection={quote(value)}",
        f"/images/00000000-0000-0000-0000-000000000000?collection={quote(value)}",
    ):
        err = error(client.get(path), (404, 422))
        assert err["code"] in ("invalid_parameter", "unknown_collection")


def test_duplicated_and_unknown_parameters(client, png_bytes):
    files = {"image": ("q.png", png_bytes(0))}
    error(client.post("/classify?k=1&k=1000", files=files), 422, "invalid_parameter")
    error(client.get("/search?image=x&image=y"), 422, "invalid_parameter")
    error(client.post("/classify?tempreature=0.1", files=files), 422, "invalid_parameter")
    error(client.post("/embed?k=3", files={"images": ("q.png", png_bytes(0))}), 422)
    error(client.post("/classify", data={"k": ["1", "2"]}, files=files), 422, "invalid_parameter")
    error(client.post("/classify", data={"nope": "1"}, files=files), 422, "invalid_parameter")
    # The query wins over a body field of the same name (documented), both validated.
    r = client.post("/classify?k=3", data={"k": "5"}, files=files)
    assert r.status_code == 200 and len(r.json()["neighbors"]) == 3
    error(client.post("/classify?k=3", data={"k": "0"}, files=files), 422)


@pytest.mark.parametrize("image", ["", "x" * 4097, "\x00", "../../etc/passwd"])
def test_search_image_bounds(client, image):
    error(client.get(f"/search?image={quote(image)}"), (404, 422))
    error(client.get("/search"), 422, "invalid_parameter")  # image is required


def test_long_and_odd_query_strings(client):
    error(client.get("/search?image=x&" + "a" * 30_000), 422)
    error(client.get("/search?" + "&".join(f"p{i}=1" for i in range(2000))), 422)
    error(client.get("/search?image=%ff%fe%00"), (404, 422))
    error(client.get("/search?image=x&k=%00"), 422)


def test_in_bounds_edges_are_accepted(client, png_bytes):
    files = {"image": ("q.png", png_bytes(0))}
    for q in ("k=1", "k=1000", "temperature=10", "temperature=0.001", "collection=shapes"):
        assert client.post(f"/classify?{q}", files=files).status_code == 200, q
    for q in ("threshold=1", "threshold=0.01", "format=png"):
        assert client.post(f"/attention?{q}", files=files).status_code == 200, q
