"""The app factory: `create_app(settings)` wires routes, error handlers, metrics and the lifespan
that builds the runtime objects. No module-level state: every app is independent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

import api
from api import errors
from api.access import check_exposure
from api.auth import ApiKeyMiddleware
from api.lifespan import lifespan
from api.metrics import Metrics, MetricsMiddleware
from api.openapi import with_limits
from api.routes import docs, router
from api.routes.page import STATIC
from core.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """A dinoserve API application.

    Args:
        settings: the validated service settings (default: read from DINOSERVE_* now).

    Raises:
        api.access.OpenToTheNetwork: settings.serve.host is off the loopback with no key and
            no DINOSERVE_ALLOW_ANONYMOUS (the factory knows only that host: uvicorn started
            with another --host by hand is the caller's to check).
    """
    settings = settings or Settings()
    check_exposure(settings)
    metrics = Metrics()  # a registry per app, not prometheus_client's global one

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[dict]:
        async with lifespan(app, settings, metrics) as state:
            yield state

    app = FastAPI(
        title="dinoserve",
        version=api.__version__,
        description="DINO image embeddings: embed, classify, search and attention maps.",
        lifespan=_lifespan,
        docs_url=None,  # api.routes.docs serves it with local assets (no CDN)
        redoc_url=None,
    )
    errors.install(app, settings.serve.retry_after_s)
    # The last added is the outermost: CORS answers preflights and decorates every response
    # (401s too); metrics count refused requests; the key check runs before any route. Without
    # DINOSERVE_API_KEY the service is open to reads: no key check at all (api.auth).
    if settings.api_key:
        keys = (settings.api_key, settings.admin_api_key, settings.write_api_key)
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    cors = settings.cors
    if cors.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allow_origins,
            allow_methods=cors.allow_methods,
            allow_headers=cors.allow_headers,
            allow_credentials=cors.allow_credentials,
            max_age=cors.max_age_s,
        )
    app.include_router(router)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # built once; then FastAPI's cache
            app.openapi_schema = with_limits(build_openapi(), settings.max_batch_images)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.ASSETS), name="docs-assets")
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
