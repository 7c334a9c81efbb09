"""Errors at the HTTP boundary: every failure leaves as `{"error": {"code", "message"}}`.

Domain code raises precise exceptions (ImageRejected, UnknownCollection, StoreError,
BlobStoreFull, BadUpload, VersionMismatch, JobBusy, …); the table and handlers here are the only
place that turns them into status codes. `ApiError` is for the routes themselves.
FastAPI's own validation errors, unknown routes (404) and wrong methods (405) get the same shape;
anything unexpected is logged and answered 500 in that shape too, never with a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import BadUpload, NotStarted, UnsupportedUpload, UploadTooLarge
from api.engine_wire import EngineUnavailable
from api.jobs import JobBusy, JobsUnavailable
from api.serving import BatcherClosed
from api.vectors import VersionMismatch
from api.writes import SWITCH_RETRY_S, CollectionExists, UnknownImage, WritesPaused
from core import store
from core.blob_usage import BlobStoreFull
from core.images import ImageRejected
from core.samples import UnknownSample
from core.store import IndexBuilding, StoreError, StoreFull, UnknownCollection
from indexer.sources import SourceError
from refresh.versions import VersionError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, a stable machine-readable code and a message for people.

    Args:
        status: HTTP status code.
        code: short snake_case code clients can branch on.
        message: what went wrong and, where possible, what to do.
        headers: extra response headers (e.g. Retry-After).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _validation_message(errors: list) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _collections(request: Request) -> list[str]:
    """The logical collections (aliases) of the app's store, for an unknown one's error; empty
    when the store cannot tell."""
    rt = getattr(request.state, "runtime", None)
    if rt is None:
        return []

    try:
        return sorted(await rt.vectors.aliases())
    except StoreError:
        return []


def allowed_methods(request: Request) -> list[str]:
    """The documented methods of the request's path (Starlette's 405 names only those of the
    first route that matched, e.g. POST but not GET for /admin/refresh)."""
    methods: set[str] = set()
    for path, item in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in item}
    return sorted(methods)


# Domain exceptions answered with their message: exception → status, code (None: the
# exception's own `code`) and headers (RETRY: the service's Retry-After, set per app).
RETRY: dict[str, str] = {"Retry-After": "DINOSERVE_SERVE__RETRY_AFTER_S"}
REFUSALS: dict[type[Exception], tuple[int, str | None, dict[str, str] | None]] = {
    BadUpload: (422, None, None),
    UploadTooLarge: (413, None, None),
    UnsupportedUpload: (415, None, None),
    VersionMismatch: (409, "model_version_mismatch", None),
    UnknownImage: (404, "unknown_image", None),
    UnknownSample: (404, "unknown_sample", None),
    CollectionExists: (409, "collection_exists", None),
    WritesPaused: (409, "collection_switching", {"Retry-After": str(SWITCH_RETRY_S)}),
    VersionError: (409, "version_unavailable", None),
    JobsUnavailable: (409, "not_with_workers", None),
    SourceError: (422, "bad_source", None),
    # Writes fail until space is freed; what is stored stays readable (reads go on).
    StoreFull: (507, "store_full", None),
    # Refused before any of the request's bytes or points were written; reads go on.
    BlobStoreFull: (507, "blob_store_full", None),
    # That one collection, for the minutes its index builds; everything else answers.
    IndexBuilding: (503, "index_building", RETRY),
    EngineUnavailable: (503, "engine_unavailable", RETRY),
    BatcherClosed: (503, "shutting_down", RETRY),
    NotStarted: (503, "not_ready", {"Retry-After": "5"}),  # an app used without its lifespan
}
# A busy job runner (api/jobs.py), by its kind: the code and the headers (a cluster job is
# short: its clients are told when to retry).
BUSY: dict[str, tuple[str, dict[str, str] | None]] = {
    "refresh": ("refresh_running", None),
    "index": ("index_running", None),
    "clusters": ("clusters_running", {"Retry-After": "5"}),
}


def _refusal(
    status: int, code: str | None, headers: dict[str, str] | None
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(status, code or exc.code, str(exc), headers)  # type: ignore[attr-defined]

    return handle


async def _busy(_: Request, exc: JobBusy) -> JSONResponse:
    code, headers = BUSY[exc.kind]
    return error_response(409, code, str(exc), headers)


async def _api(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        message = "no such route" if exc.detail == "Not Found" else str(exc.detail)
    elif status == 405:
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        message = f"{request.method} is not allowed here; use {headers['Allow']}"
    else:
        message = str(exc.detail)
    return error_response(status, _code_for(status), message, headers)


async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for e in errors:
        if tuple(e.get("loc", ())) == ("path", "name"):  # a collection name in the path
            try:
                store.check_name(str(e.get("input", "")))
            except ValueError as bad:
                return error_response(422, "invalid_collection", str(bad))
    return error_response(422, "invalid_parameter", _validation_message(errors))


async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
    return error_response(422, "invalid_parameter", _validation_message(list(exc.errors())))


async def _image(_: Request, exc: ImageRejected) -> JSONResponse:
    if exc.reason == "too_large":
        return error_response(413, "image_too_large", str(exc))
    code = "empty_image" if exc.reason == "empty" else "invalid_image"
    return error_response(422, code, str(exc))


async def _collection(request: Request, exc: UnknownCollection) -> JSONResponse:
    known = await _collections(request)
    hint = (
        f"; collections: {', '.join(known)}"
        if known
        else "; none is indexed yet (dinoserve index FOLDER --collection NAME)"
    )
    return error_response(404, "unknown_collection", f"{exc}{hint}")


def _store(retry: dict[str, str]) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Qdrant: %s", exc)
        return error_response(503, "store_unavailable", f"the vector store failed: {exc}", retry)

    return handle


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "an unexpected error occurred; see the log")


# The exceptions whose answer needs more than their message (the request, a log line).
HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    JobBusy: _busy,
    ApiError: _api,
    StarletteHTTPException: _http,
    RequestValidationError: _request_validation,
    ValidationError: _validation,
    ImageRejected: _image,
    UnknownCollection: _collection,
    Exception: _unexpected,
}


def install(app: FastAPI, retry_after_s: int = 5) -> None:
    """Register the handlers that translate exceptions into the JSON error shape.

    Args:
        app: the application.
        retry_after_s: the Retry-After sent with 503s.
    """
    retry = {"Retry-After": str(retry_after_s)}
    for exc_type, (status, code, headers) in REFUSALS.items():
        app.add_exception_handler(
            exc_type, _refusal(status, code, retry if headers is RETRY else headers)
        )
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    app.add_exception_handler(StoreError, _store(retry))
