"""Admin: refresh the served backbone, roll it back, list and gc model versions.

Every route needs `Authorization: Bearer <DINOSERVE_ADMIN_API_KEY>` (or `X-API-Key`): missing
→ 401, wrong → 403; without a configured admin key the routes answer 403 `admin_disabled`,
never open.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api.auth import key_matches, presented_key
from api.deps import RuntimeDep
from api.errors import ApiError
from api.index_jobs import IndexStatus
from api.openapi import AUTH, errors
from indexer.run import IndexRequest


def require_admin(request: Request, rt: RuntimeDep) -> None:
    expected = rt.settings.admin_api_key
    if not expected:
        raise ApiError(403, "admin_disabled", "admin routes are off: set DINOSERVE_ADMIN_API_KEY")
    # Headers only: a browser's cookie must not carry admin rights (no cross-site surprises).
    given = presented_key(request.headers, cookies=False)
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "admin key required: Authorization: Bearer <key> or X-API-Key",
            {"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(given, [expected]):
        raise ApiError(403, "forbidden", "wrong admin key")


# Refusals (a job running, no such version, a bad source) are answered by api/errors.py.
router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=errors(*AUTH)
)


@router.post(
    "/refresh",
    summary="Re-embed every served collection with another model version",
    status_code=202,
    responses=errors(409, 422),
)
async def start_refresh(
    rt: RuntimeDep,
    version: Annotated[str | None, Query(description="default: newest version not served")] = None,
) -> JSONResponse:
    """Starts in the background (202 and a job id); follow it with GET /admin/refresh. The old
    version keeps serving until every collection is re-embedded; a failure changes nothing."""
    return JSONResponse(rt.admin.start(version).as_dict(), status_code=202)


@router.get("/refresh", summary="State and progress of the last refresh")
async def refresh_status(rt: RuntimeDep) -> dict[str, Any]:
    """state idle|running|done|failed, per collection done/total, images left out, error."""
    return rt.admin.status.as_dict()


@router.post("/rollback", summary="Serve the previous model version again", responses=errors(409))
async def rollback(rt: RuntimeDep) -> dict[str, Any]:
    """Flips the aliases back to the previous version's collections (kept since its refresh),
    switches the engine and CURRENT. 409 when none is kept or a refresh is running."""
    return await rt.admin.rollback()


@router.post(
    "/index",
    summary="Index a folder, tar or manifest on the service's machine",
    status_code=202,
    responses=errors(409, 422),
)
async def start_index(
    rt: RuntimeDep,
    source: Annotated[str, Query(description="folder or tar/tar.gz on the service's machine")] = "",
    collection: Annotated[str | None, Query(description="default: DINOSERVE_COLLECTION")] = None,
    labels: Annotated[Literal["dirs", "none"], Query(description="dirs: sub-folder")] = "none",
    manifest: Annotated[str | None, Query(description="CSV/JSONL path,label,…")] = None,
    shard: Annotated[str | None, Query(description="i/N: this worker's share")] = None,
    prune: Annotated[bool, Query(description="delete points whose source is gone")] = False,
    failures: Annotated[str | None, Query(description="JSONL report of skipped images")] = None,
) -> JSONResponse:
    """What `dinoserve index` does, run by the service that owns the embedded store (the CLI
    hands its job here). Starts in the background (202); follow it with GET /admin/index."""
    req = IndexRequest(
        source=source,
        collection=collection,
        labels=labels,
        manifest=manifest,
        shard=shard,
        prune=prune,
        failures=failures,
    )
    return JSONResponse(rt.indexing.start(req).as_dict(), status_code=202)


@router.get("/index", summary="State and progress of the last indexing job")
async def index_status(rt: RuntimeDep) -> dict[str, Any]:
    """state idle|running|done|failed, done/total, indexed, unchanged, failed, the summary."""
    status = rt.indexing.status
    return status.as_dict() if status is not None else IndexStatus().as_dict()


@router.get(
    "/models", summary="Versions of the served model and their collections", responses=errors(409)
)
async def models(rt: RuntimeDep) -> dict[str, Any]:
    return await rt.admin.describe()


@router.post(
    "/gc", summary="Delete old model versions and their collections", responses=errors(409)
)
async def gc(rt: RuntimeDep) -> dict[str, Any]:
    """Keeps DINOSERVE_REFRESH__KEEP_VERSIONS up to the served one (never it or the previous
    one) and every newer version."""
    return await rt.admin.gc()
