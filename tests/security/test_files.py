"""No server-side fetching and no file reads outside the index: URLs are names, not requests;
`/images/{id}` serves only points of the collection; traversal never reaches the disk."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from core.store import point_id
from tests.security.samples import encode, gradient
from tests.security.test_uploads import error


@pytest.fixture
def bait() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that records every request it gets (it must get none)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/secret", hits
    srv.shutdown()
    srv.server_close()


def test_urls_are_never_fetched(client, bait):
    url, hits = bait
    for image in (
        url,
        "file:///etc/passwd",
        "/etc/passwd",
        "tar:///etc/passwd#x",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1:6379/_INFO",
    ):
        # a URI names an indexed image (its point id is derived from it): not indexed → 404
        error(client.get(f"/search?image={quote(image)}"), 404, "unknown_image")
    for body in ({"image": url}, {"image": f"data:image/png;base64,{url}"}, {"image": [url]}):
        error(client.post("/classify", json=body), 422)
    error(client.post("/embed", json={"images": [url]}), 422)
    error(client.post("/embed", data={"images": url}), (415, 422))  # a form field, not a file
    assert hits == []


TRAVERSAL = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....//....//etc/passwd",
    "%00",
    "..\\..\\windows\\win.ini",
    "not-a-uuid",
    "00000000-0000-0000-0000-00000000000g",
]


@pytest.mark.parametrize("ident", TRAVERSAL)
def test_images_route_takes_point_ids_only(client, ident):
    r = client.get(f"/images/{ident}")
    assert r.status_code in (404, 422), r.text
    assert b"root:" not in r.content
    error(r, (404, 422))


def test_images_of_files_that_are_not_indexed_are_404(client):
    # The point id of a file that exists but was never indexed, in its plain UUID form.
    for uri in ("/etc/passwd", __file__):
        error(client.get(f"/images/{point_id(uri)}"), 404, "unknown_image")
    error(client.get("/images/00000000-0000-0000-0000-000000000000"), 404, "unknown_image")


def test_indexed_images_are_served_as_thumbnails(client):
    png = encode(gradient(), "PNG")
    hit = client.post("/search?k=1", files={"image": ("q.png", png)}).json()["results"][0]
    r = client.get(f"/images/{hit['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"


RAW_PATHS = [
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e%2f%2e%2e%2fapi%2fmain.py",
    "/images/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/static//etc/passwd",
    "/static/app.js%00.png",
    "/static/../api/main.py",
    "/images/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
]


@pytest.mark.parametrize("path", RAW_PATHS)
def test_raw_traversal_on_the_wire(live, path):
    """Sent byte for byte (clients normalise `..`), to the real server."""
    status, body = _raw(live.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status in (400, 404, 422), (status, body[:300])
    assert b"root:" not in body and b"create_app" not in body


def _raw(port: int, request: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_methods_routes_and_headers_on_the_wire(live):
    for method in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "FOO"):
        request = f"{method} /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        status, body = _raw(live.port, request + "Connection: close\r\n\r\n")
        assert 400 <= status < 500, (method, status, body)
    status, _ = _raw(
        live.port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        + "a" * 60_000
        + "\r\nConnection: close\r\n\r\n",
    )
    assert status < 500
    status, body = _raw(
        live.port,
        "GET /search?image=" + "a" * 60_000 + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert 400 <= status < 500, body[:200]


def test_odd_methods_do_not_grow_the_metrics(client):
    for method in ("FOOBAR", "BREW", "PROPFIND"):
        error(client.request(method, "/embed"), 405)
    text = client.get("/metrics").text
    assert 'method="OTHER"' in text and "FOOBAR" not in text
