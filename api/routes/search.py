"""`GET /search?image=…` (an indexed image) and `POST /search` (an uploaded one): the most
similar indexed images."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from api.body_docs import body_doc
from api.deps import RuntimeDep, ServingDep, StoreDep, UploadBody, single, upload_body
from api.errors import ApiError
from api.openapi import AUTH, UPLOAD, errors
from api.params import SearchByIdParams, SearchParams
from api.vectors import query_id

router = APIRouter(tags=["search"])
SearchBody = Annotated[UploadBody[SearchParams], Depends(upload_body(SearchParams))]


class Result(BaseModel):
    id: str
    score: float
    uri: str | None
    label: str | None


class SearchResponse(BaseModel):
    results: list[Result]
    collection: str
    physical_collection: str  # the one searched: `<collection>__<model_version>`
    model_version: str  # of the query vector and the collection


def _absolute(image: str) -> str | None:
    """A relative file path made absolute against the service's working directory, as the
    indexer stores it (`var/data/x.png` → `/srv/var/data/x.png`); None for anything else."""
    if "://" in image or "\x00" in image or Path(image).is_absolute():
        return None
    try:
        uuid.UUID(image)
        return None
    except ValueError:
        pass
    try:
        return str(Path(image).resolve())
    except (OSError, RuntimeError):  # too long, a symlink loop: not an indexed path either
        return None


def _response(hits: list, name: str, physical: str, version: str) -> SearchResponse:
    return SearchResponse(
        results=[Result(**h.as_dict()) for h in hits],
        collection=name,
        physical_collection=physical,
        model_version=version,
    )


@router.get(
    "/search",
    summary="Images similar to an indexed image",
    response_model=SearchResponse,
    responses=errors(*AUTH, 404, 409, 422, 503),
)
async def search_indexed(
    rt: RuntimeDep,
    sv: ServingDep,
    vectors: StoreDep,
    params: Annotated[SearchByIdParams, Query()],
) -> SearchResponse:
    """`image` is a point id or the URI it was indexed from; its stored vector is the query and
    it is left out of the results. `label` keeps only images with that label."""
    name = params.collection or rt.settings.collection
    physical = await vectors.physical(name, sv.version)
    pid = query_id(params.image)
    point = await vectors.point(physical, pid, with_vector=True)
    if point is None and (absolute := _absolute(params.image)) is not None:
        pid = query_id(absolute)
        point = await vectors.point(physical, pid, with_vector=True)
    if point is None or point.vector is None:
        raise ApiError(404, "unknown_image", f"no indexed image {params.image!r} in the collection")
    vector = point.vector if isinstance(point.vector, list) else None
    if vector is None:  # named vectors are not part of the layout
        raise ApiError(409, "unsupported_collection", "the collection has named vectors")
    hits = await vectors.nearest(physical, vector, params.k, params.label, exclude=pid)
    return _response(hits, name, physical, sv.version)


@router.post(
    "/search",
    summary="Images similar to an uploaded image",
    response_model=SearchResponse,
    responses=errors(*AUTH, 404, 409, *UPLOAD, 503),
    openapi_extra=body_doc(SearchParams),
)
async def search_upload(
    rt: RuntimeDep, sv: ServingDep, vectors: StoreDep, body: SearchBody
) -> SearchResponse:
    """The upload (multipart `image` or JSON `{"image": base64}`) is embedded by the served
    model and compared with the collection."""
    params = body.params
    name = params.collection or rt.settings.collection
    physical = await vectors.physical(name, sv.version)
    vector = (await sv.embed([single(body.upload)]))[0]
    hits = await vectors.nearest(physical, vector.tolist(), params.k, params.label)
    return _response(hits, name, physical, sv.version)
