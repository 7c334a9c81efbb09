"""API keys: who may call the service.

With `DINOSERVE_API_KEY` set, every route needs a key except the probes (`/healthz`, `/readyz`:
orchestrators call them without secrets) and the shells of the web page (`/`, `/static/*`) and
of the API docs (`/docs`, `/docs-assets/*`): nothing but the pages' own code, which asks for the
key when a call answers 401. The admin key (`DINOSERVE_ADMIN_API_KEY`) and the write key
(`DINOSERVE_WRITE_API_KEY`) grant normal access too; `/admin/*` always needs the admin key itself
(api.routes.admin), and writes to collections the write or the admin key
(api.routes.collections). Without DINOSERVE_API_KEY the service is open to reads; it starts so
off the loopback only with DINOSERVE_ALLOW_ANONYMOUS set (api.access, which also decides when
writes need no key).

A key is presented as `Authorization: Bearer <key>`, `X-API-Key: <key>` or the cookie
`dinoserve_key` (set by the page, SameSite=Strict, so that `<img src="/images/…">` works and
other sites' pages cannot use it). Never in the URL: URLs end up in logs. Missing → 401 with
`WWW-Authenticate`, wrong → 403, both in the one error shape; keys are compared in constant
time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

COOKIE = "dinoserve_key"
# The API docs page is a shell too: the schema it loads (/openapi.json) needs the key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")


def presented_key(headers: Headers, cookies: bool = True) -> str | None:
    """The key a request carries: Bearer token, X-API-Key, or (if `cookies`) the page's cookie.

    Args:
        headers: the request headers.
        cookies: also look at the `dinoserve_key` cookie (not for admin routes).
    """
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    given = headers.get("x-api-key", "").strip()
    if given:
        return given
    if cookies and "cookie" in headers:
        return cookie_parser(headers["cookie"]).get(COOKIE) or None
    return None


def key_matches(given: str, expected: Iterable[str | None]) -> bool:
    """True if `given` equals one of the configured keys, compared in constant time (every
    configured key is compared, so timing does not tell which one matched)."""
    # HTTP headers are bytes that Starlette decodes as latin-1: back to those bytes, compared
    # with the UTF-8 of the configured key, so a non-ASCII key sent as UTF-8 matches.
    raw = given.encode("latin-1", "replace")
    ok = False
    for key in expected:
        if key:
            ok |= hmac.compare_digest(raw, key.encode())
    return ok


def is_open(path: str) -> bool:
    """Routes served without a key: the probes and the page's shell."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    """Refuses requests without a valid key before any route (or 404) is reached.

    Args:
        app: the wrapped application.
        keys: DINOSERVE_API_KEY (without one the app adds no key check: api.main), and the
            admin and write keys (None where unset), accepted here too.
    """

    def __init__(self, app: ASGIApp, keys: tuple[str | None, ...]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = presented_key(Headers(scope=scope))
        if given is None:
            response = error_response(
                401,
                "unauthorized",
                "API key required: Authorization: Bearer <key>, X-API-Key, or the page's key",
                {"WWW-Authenticate": "Bearer"},
            )
        elif not key_matches(given, self.keys):
            response = error_response(403, "forbidden", "wrong API key")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
