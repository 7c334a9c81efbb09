"""`GET /docs`: Swagger UI for the service's OpenAPI document, with its assets served by the
service itself from the `swagger-ui-py` package (a copy of swagger-ui-dist), so the page works
with no network, like everything else the service serves."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS = Path(swagger_ui.__file__).resolve().parent / "static"
ASSETS_URL = "/docs-assets"
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="dinoserve API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
    )
