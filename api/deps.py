"""`Annotated` dependencies: how a route reaches the runtime objects built in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from api.errors import ApiError
from api.metrics import Metrics
from api.runtime import Runtime
from api.serving import Serving
from api.vectors import Vectors
from core.package import PackageMeta


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.state, "runtime", None)
    if runtime is None:  # only without the lifespan (an app used without starting it)
        raise ApiError(503, "not_ready", "the service is not started", {"Retry-After": "5"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_serving(rt: RuntimeDep) -> AsyncIterator[Serving]:
    """The served model state, taken ONCE per request and held until it ends, so a refresh
    that swaps engines meanwhile neither changes nor closes what this request uses (async: the
    count changes on the event loop only)."""
    serving = rt.serving
    serving.users += 1
    try:
        yield serving
    finally:
        serving.users -= 1


def get_meta(rt: RuntimeDep) -> PackageMeta:
    return rt.meta


def get_vectors(rt: RuntimeDep) -> Vectors:
    return rt.vectors


def get_metrics(rt: RuntimeDep) -> Metrics:
    return rt.metrics


MetaDep = Annotated[PackageMeta, Depends(get_meta)]
StoreDep = Annotated[Vectors, Depends(get_vectors)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServingDep = Annotated[Serving, Depends(get_serving)]
