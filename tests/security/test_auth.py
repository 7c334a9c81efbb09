"""API keys and CORS: every route but the probes and the page's shell needs the key when one is
set (401 missing, 403 wrong), the admin key opens everything, keys compare in constant time."""

from __future__ import annotations

import pytest

import api.auth
from core.settings import Settings
from tests.security.test_uploads import error

KEY, ADMIN = "user-key-Ω", "admin-key"
PROTECTED = [
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("GET", "/search?image=x"),
    ("POST", "/embed"),
    ("POST", "/classify"),
    ("POST", "/search"),
    ("POST", "/attention"),
    ("GET", "/images/00000000-0000-0000-0000-000000000000"),
    ("GET", "/openapi.json"),
    ("GET", "/no-such-route"),
    ("GET", "/admin/refresh"),
    ("DELETE", "/embed"),
    ("GET", "/static"),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/",
    "/static/app.js",
    "/static/style.css",
    "/docs",
    "/docs-assets/swagger-ui-bundle.js",
]


@pytest.fixture
def app(make_client):
    return make_client(api_key="user-key", admin_api_key=ADMIN)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_key_is_401_wrong_key_is_403(app, method, path):
    r = app.request(method, path)
    error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    for headers in (
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "nope"},
        {"Cookie": "dinoserve_key=nope"},
        {"Authorization": "Bearer user-key2"},
        {"X-API-Key": "user-ke"},
    ):
        error(app.request(method, path, headers=headers), 403, "forbidden")


@pytest.mark.parametrize("path", OPEN)
def test_probes_and_the_page_shell_stay_open(app, path):
    assert app.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer user-key"},
        {"authorization": "bearer user-key"},
        {"X-API-Key": "user-key"},
        {"Cookie": "other=1; dinoserve_key=user-key"},
        {"Authorization": f"Bearer {ADMIN}"},
        {"X-API-Key": ADMIN},
    ],
)
def test_the_key_or_the_admin_key_opens_the_api(app, png_bytes, headers):
    assert app.get("/model", headers=headers).status_code == 200
    r = app.post("/classify", headers=headers, files={"image": ("q.png", png_bytes(0))})
    assert r.status_code == 200, r.text
    assert app.get("/metrics", headers=headers).status_code == 200


def test_admin_routes_need_the_admin_key_itself(app):
    error(app.get("/admin/refresh", headers={"X-API-Key": "user-key"}), 403, "forbidden")
    # the page's cookie never carries admin rights (cross-site requests, stolen pages)
    r = app.get("/admin/refresh", headers={"Cookie": f"dinoserve_key={ADMIN}"})
    error(r, 401, "unauthorized")
    r = app.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code in (200, 409)  # a package path pins one version: 409 by design


def test_without_a_key_the_api_is_open_and_admin_off(make_client):
    c = make_client()
    assert c.get("/model").status_code == 200
    error(c.get("/admin/refresh", headers={"X-API-Key": "x"}), 403, "admin_disabled")


def test_an_empty_key_means_no_key(monkeypatch, make_settings):
    monkeypatch.setenv("DINOSERVE_API_KEY", "")
    monkeypatch.setenv("DINOSERVE_ADMIN_API_KEY", "")
    s = Settings()
    assert s.api_key is None and s.admin_api_key is None


def test_non_ascii_keys_and_odd_headers(make_client):
    c = make_client(api_key=KEY)
    assert c.get("/model", headers={"X-API-Key": KEY.encode()}).status_code == 200  # UTF-8
    error(c.get("/model", headers={"X-API-Key": b"\xff\xfe"}), 403)
    error(c.get("/model", headers={"Authorization": "Bearer "}), 401)
    error(c.get("/model", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    error(c.get("/model", headers={"X-API-Key": "k" * 8000}), 403)


def test_keys_are_compared_in_constant_time(app, monkeypatch):
    calls = []
    real = api.auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.auth.hmac, "compare_digest", spy)
    app.get("/model", headers={"X-API-Key": "guess"})
    # both configured keys are compared, whichever matches (timing tells nothing)
    assert sorted(b for _, b in calls) == sorted([b"user-key", ADMIN.encode()])


def test_cors_is_off_by_default(make_client):
    c = make_client()
    r = c.get("/model", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = c.options(
        "/embed",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    error(pre, 405)


def test_cors_when_configured(make_client):
    c = make_client(api_key="user-key", cors={"allow_origins": ["https://app.example"]})
    ok = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    pre = c.options("/embed", headers=ok)  # preflights carry no key
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    bad = c.options("/embed", headers={**ok, "Origin": "https://evil.example"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    # a refused request still tells the allowed page why (CORS headers on the 401)
    r = c.get("/model", headers={"Origin": "https://app.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = c.get("/model", headers={"Origin": "https://app.example", "X-API-Key": "user-key"})
    assert r.status_code == 200


def test_the_page_asks_for_the_key(app):
    js = app.get("/static/app.js").text
    assert "dinoserve_key" in js and "SameSite=Strict" in js
