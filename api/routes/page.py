"""`GET /`: the web page, a static file in api/static/ (and its assets under /static)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    page = STATIC / "index.html"
    if not page.is_file():
        raise ApiError(404, "not_found", "no web page installed (api/static/index.html)")
    return FileResponse(page, media_type="text/html")
