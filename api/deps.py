"""Route dependencies: how a route reaches the runtime objects built in the lifespan
(`Annotated` types: `RuntimeDep`, `ServingDep`, `StoreDep`, …), the request body of a route
that takes images (`upload_body`), and the check every route makes of its query string.

An upload route declares `body: UploadBody[P]` and gets the images read within the limits
(api/uploads.py) and its parameters `P`, the query string completed by the body's fields. One
dependency gives both: FastAPI collects a failed dependency's errors once per path that reaches
it, so an upload and a parameters dependency that both needed the query would report a bad
query twice. The query, and any `after` dependency (the collection in the path), are validated
before the body is read: a bad parameter is answered 422 without reading megabytes.
"""

# No `from __future__ import annotations`: FastAPI reads the signature of the dependency made
# by `upload_body`, whose query model is the factory's argument, not a name it could look up
# later.

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from api.errors import ApiError
from api.metrics import Metrics
from api.runtime import Runtime
from api.serving import Serving
from api.uploads import Upload, merge_params, read_upload
from api.vectors import Vectors
from core.package import PackageMeta

P = TypeVar("P", bound=BaseModel)


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


def single_valued(request: Request) -> None:
    """Refuse a query parameter given twice (`k=1&k=1000`): which one wins is ambiguous."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        shown = ", ".join(repr(n[:64]) for n in repeated[:5])
        raise ApiError(422, "invalid_parameter", f"parameter given more than once: {shown}")


@dataclass
class UploadBody(Generic[P]):
    """What an upload route was sent: the images (and per-image lists), and its parameters."""

    upload: Upload
    params: P


def _nothing() -> None:
    """The default `after`: nothing else to check before the body."""


def upload_body(
    params: type[P], lists: tuple[str, ...] = (), after: Callable[..., Any] = _nothing
) -> Callable[..., Awaitable[UploadBody[P]]]:
    """The dependency that reads an upload route's body, for `Annotated[..., Depends(...)]`.

    Args:
        params: the route's parameters (query string, or the same names in the body).
        lists: names taken as one value per image (see `Upload.lists`).
        after: a dependency that must succeed before the body is read (e.g. the path's
            collection name), as FastAPI checks a dependency's own before calling it.
    """

    async def read(
        request: Request,
        rt: RuntimeDep,
        _: Annotated[Any, Depends(after)],
        query: Annotated[params, Query()],  # type: ignore[valid-type]
    ) -> UploadBody[P]:
        s = rt.settings
        upload = await read_upload(request, s.max_upload_bytes, s.max_batch_images, lists)
        return UploadBody(upload, merge_params(query, upload.fields, request))

    return read
