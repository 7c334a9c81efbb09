"""Operations: liveness, readiness, Prometheus metrics and the served model's card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import MetaDep, MetricsDep, RuntimeDep
from api.errors import error_response
from api.openapi import AUTH, ErrorBody, errors
from core.store import StoreError

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz(request: Request) -> dict[str, str]:
    """200 while the process serves HTTP; once the model is loaded, with the engine that runs
    it (`engine`, `engine_variant`: DINOSERVE_ENGINE=auto resolved) and `engine_setting`."""
    rt = getattr(request.state, "runtime", None)
    if rt is None:
        return {"status": "ok"}
    return {"status": "ok", **rt.serving.engine_info(rt.settings.engine)}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": ErrorBody, "description": "model not loaded or Qdrant unreachable"}},
)
async def readyz(request: Request) -> Any:
    """200 when the model is loaded and Qdrant answers; 503 (with Retry-After) otherwise."""
    rt = getattr(request.state, "runtime", None)
    if rt is None:
        return error_response(503, "not_ready", "the model is not loaded", {"Retry-After": "5"})
    retry = {"Retry-After": str(rt.settings.serve.retry_after_s)}
    try:
        await rt.vectors.ping()
    except StoreError as exc:
        return error_response(503, "not_ready", f"Qdrant is not reachable: {exc}", retry)
    return {"status": "ready", "model_version": rt.meta.version, "qdrant": "ok"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}, **errors(*AUTH)},
)
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/model", summary="The served model package (model.json)", responses=errors(*AUTH, 503))
async def model(rt: RuntimeDep, meta: MetaDep) -> dict[str, Any]:
    """model.json of the served package, with the engine that runs it (as /healthz says)."""
    return {**meta.model_dump(mode="json"), **rt.serving.engine_info(rt.settings.engine)}
