"""Collections over HTTP: list and describe them, create one, add uploaded images with labels,
relabel and delete images (api/writes.py holds the store side and the refresh gate).

Reads need the read key like every route; writes (POST, PATCH, DELETE) need
DINOSERVE_WRITE_API_KEY or the admin key whenever any key is configured, or the service listens
off the loopback without DINOSERVE_ALLOW_ANONYMOUS=all (api/access.py), in a header (never the
page's cookie: another site's form must not be able to write).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from api.access import anonymous_writes
from api.auth import key_matches, presented_key
from api.body_docs import body_doc
from api.deps import RuntimeDep, Upload, UploadBody, read_body, upload_body
from api.errors import ApiError
from api.openapi import AUTH, UPLOAD, errors
from api.params import Params
from api.runtime import Runtime
from api.serving import Serving
from api.vectors import query_id
from api.writes import NewImage, Writer
from core import store
from core.engines import preprocess_batch
from core.images import decode_each
from core.store import Point

Label = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
]
SourceUri = Annotated[
    str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x1f\x7f]+$")
]
PATCH_BYTES = 4096  # a label patch is a few bytes; refuse megabytes before parsing them
INFO_EXAMPLE = {
    "name": "pets",
    "physical_collection": "pets__20261126-143000-3f2a9c1",
    "model_version": "20261126-143000-3f2a9c1",
    "points": 3,
    "labelled": 2,
    "labels": {"cat": 1, "dog": 1},
}


def require_write(request: Request, rt: RuntimeDep) -> None:
    """Writes need the write or the admin key (headers only), unless the service is open to
    writes (no key set, on the loopback or with DINOSERVE_ALLOW_ANONYMOUS=all: api.access)."""
    s = rt.settings
    if anonymous_writes(s):
        return  # an open service stays open
    if not (s.api_key or s.admin_api_key or s.write_api_key):  # no key could write
        raise ApiError(
            403,
            "writes_disabled",
            f"writes are off: DINOSERVE_ALLOW_ANONYMOUS={s.allow_anonymous} lets callers "
            "without a key read only; set DINOSERVE_WRITE_API_KEY or DINOSERVE_ADMIN_API_KEY "
            "to write",
        )
    given = presented_key(request.headers, cookies=False)
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "writes need the write key (DINOSERVE_WRITE_API_KEY) or the admin key: "
            "Authorization: Bearer <key> or X-API-Key",
            {"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(given, [s.write_api_key, s.admin_api_key]):
        raise ApiError(403, "forbidden", "this key may not write: use the write or admin key")


router = APIRouter(prefix="/collections", tags=["collections"])
WriteDep = Depends(require_write)


def _name(name: str) -> str:
    try:
        return store.check_name(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_collection", str(exc)) from exc


def _writer(rt: Runtime) -> Writer:
    return Writer(rt.vectors.db, rt.blobs)


class CollectionInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [INFO_EXAMPLE]})

    name: str
    physical_collection: str
    model_version: str | None
    points: int
    labelled: int
    labels: dict[str, int] = Field(description="label → points, most frequent first")


class CollectionList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"default": "pets", "collections": [INFO_EXAMPLE]}]}
    )

    default: str = Field(description="the collection requests use when they name none")
    collections: list[CollectionInfo]


class AddParams(Params):
    label: Label | None = Field(None, description="label of every image sent (or `labels`)")
    uri: SourceUri | None = Field(
        None, description="your name for the one image sent (its point id derives from it)"
    )


class AddBody(AddParams):
    """What the body of an add may carry beside the images (for its OpenAPI description)."""

    labels: list[Label | None] | None = Field(None, description="one label per image, in order")
    uris: list[SourceUri] | None = Field(None, description="one name per image, in order")


class Added(BaseModel):
    id: str
    sha256: str
    label: str | None
    source_uri: str | None
    unchanged: bool = Field(description="the point already held these bytes: not re-embedded")


class AddResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection": "pets",
                    "physical_collection": "pets__20261126-143000-3f2a9c1",
                    "model_version": "20261126-143000-3f2a9c1",
                    "ids": ["6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11"],
                    "images": [
                        {
                            "id": "6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11",
                            "sha256": "9f86d0…",
                            "label": "cat",
                            "source_uri": None,
                            "unchanged": False,
                        }
                    ],
                }
            ]
        }
    )

    collection: str
    physical_collection: str
    model_version: str
    ids: list[str]
    images: list[Added]


class LabelPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"label": "cat"}, {"label": None}]}
    )

    label: Label | None = Field(description="the new label; null removes it")


class ImageInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11",
                    "collection": "pets",
                    "label": "cat",
                    "uri": "blob://9f86d0…",
                }
            ]
        }
    )

    id: str
    collection: str
    label: str | None
    uri: str | None


class Deleted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11",
                    "collection": "pets",
                    "deleted": True,
                    "bytes_deleted": True,
                }
            ]
        }
    )

    id: str
    collection: str
    deleted: bool
    bytes_deleted: bool = Field(
        description="the uploaded bytes went too (no other point used them)"
    )


NameArg = Annotated[
    str,
    Path(
        description="logical collection name (letters, digits, '-', '_'; no '__')",
        examples=["pets"],
        # store.NAME_RE without `__` (it separates the model version), spelt without a
        # lookahead so that generators of the schema can follow it
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]|_[A-Za-z0-9-])*_?$",
        max_length=63,
    ),
]
IdArg = Annotated[
    str,
    Path(
        description="point id (as in search results) or the URI it was indexed or sent under",
        examples=["6f1c1b8e-2f0d-5c59-9d3e-0b8f6c2f4a11"],
        min_length=1,
        max_length=2048,
    ),
]


@router.get(
    "", summary="List the collections", response_model=CollectionList, responses=errors(*AUTH, 503)
)
async def list_collections(rt: RuntimeDep) -> dict[str, Any]:
    """Every logical collection: its physical collection and model version, points, labelled
    points, and labels with their counts."""
    collections = await rt.vectors.run(_writer(rt).all_info)
    return {"default": rt.settings.collection, "collections": collections}


@router.get(
    "/{name}",
    summary="Describe a collection",
    response_model=CollectionInfo,
    responses=errors(*AUTH, 404, 422, 503),
)
async def get_collection(rt: RuntimeDep, name: NameArg) -> dict[str, Any]:
    """404 for an unknown collection."""
    name = _name(name)
    return await rt.vectors.run(lambda: _writer(rt).info(name))


@router.post(
    "/{name}",
    summary="Create an empty collection for the served model",
    response_model=CollectionInfo,
    status_code=201,
    responses={
        **errors(*AUTH, 409, 422, 503, 507),
        200: {"description": "it exists already, for the served model"},
    },
    dependencies=[WriteDep],
)
async def create_collection(rt: RuntimeDep, name: NameArg) -> JSONResponse:
    """201 when created, 200 when it exists already for the served model version."""
    name = _name(name)
    async with rt.writes.entry():
        sv = rt.serving
        info, created = await rt.vectors.run(
            lambda: _writer(rt).create(name, sv.version, sv.meta.embed_dim)
        )
    return JSONResponse(info, status_code=201 if created else 200)


def _path_name(name: NameArg) -> str:
    """The collection of the path, checked before the body of an add is read."""
    return _name(name)


CollectionName = Annotated[str, Depends(_path_name)]
AddRequest = Annotated[
    UploadBody[AddParams],
    Depends(upload_body(AddParams, lists=("labels", "uris"), after=_path_name)),
]


def _per_image(values: list[str | None] | None, one: str | None, n: int, what: str) -> list:
    if values is None:
        return [one] * n
    if one is not None:
        raise ApiError(422, "invalid_parameter", f"give either {what} or {what}s, not both")
    if len(values) != n:
        raise ApiError(422, "invalid_parameter", f"{len(values)} {what}s for {n} images")
    return values


def _images(upload: Upload, params: AddParams) -> list[NewImage]:
    n = len(upload.images)
    labels = _per_image(upload.lists.get("labels"), params.label, n, "label")
    uris = _per_image(upload.lists.get("uris"), params.uri, n, "uri")
    if params.uri is not None and n > 1:
        raise ApiError(422, "invalid_parameter", "uri names one image: send `uris`, one per image")
    for label in labels:
        if label is not None:
            AddParams.model_validate({"label": label})  # the same rules as `label`
    for uri in uris:
        if uri is not None:
            AddParams.model_validate({"uri": uri})
    return [NewImage(d, lab, u) for d, lab, u in zip(upload.images, labels, uris, strict=True)]


@dataclass
class _Plan:
    """An add before the engine: where it goes, what is new and what is stored already."""

    physical: str
    stored: dict[str, Point]  # id → the point that already holds these bytes
    fresh: list[NewImage]  # to embed
    sizes: list[tuple[int, int]]  # of `fresh`
    batch: np.ndarray | None  # `fresh` preprocessed


async def _plan(sv: Serving, writer: Writer, name: str, images: list[NewImage]) -> _Plan:
    """Resolve the collection, look up the ids, decode and preprocess what is new: one trip to
    a worker thread (each full image dropped once its crop is made)."""

    def work() -> _Plan:
        physical = writer.target(name, sv.version)
        stored = writer.unchanged(physical, images)
        fresh = [img for img in images if img.point_id not in stored]
        sizes, crops = [], []
        for img in decode_each([i.data for i in fresh], sv.max_pixels):
            sizes.append(img.size)
            crops.append(preprocess_batch(sv.meta, [img])[0])
        return _Plan(physical, stored, fresh, sizes, np.stack(crops) if crops else None)

    async with sv.decode_slots:
        return await run_in_threadpool(work)


@router.post(
    "/{name}/images",
    summary="Add images (with labels) to a collection",
    response_model=AddResponse,
    openapi_extra=body_doc(AddBody, many=True),
    responses=errors(*AUTH, 404, 409, *UPLOAD, 503, 507),
    dependencies=[WriteDep],
)
async def add_images(rt: RuntimeDep, name: CollectionName, body: AddRequest) -> dict[str, Any]:
    """Up to DINOSERVE_MAX_BATCH_IMAGES images (multipart `images` files or JSON
    `{"images": [base64, …]}`, the limits of /embed), embedded with the served model and
    stored; their bytes are kept (DINOSERVE_BLOB_DIR) for thumbnails and refreshes.

    `label` labels them all, or `labels` one each (repeated form fields or a JSON list; empty
    or null: none); `uri` (one image) or `uris` name them your way. The point id is the
    UUIDv5 of that name, else of the bytes: sending the same again changes nothing (the label
    is updated). 409 when the collection holds another model version's embeddings, or while
    the collections switch versions (Retry-After)."""
    images = _images(body.upload, body.params)
    # The last of two images with the same id wins, as it would in two requests.
    by_id = {img.point_id: img for img in images}
    writer = _writer(rt)
    async with rt.writes.entry():
        sv = rt.serving  # taken inside the gate: no swap happens before this write ends
        plan = await _plan(sv, writer, name, list(by_id.values()))
        physical, stored = plan.physical, plan.stored
        same = [(img, stored[pid]) for pid, img in by_id.items() if pid in stored]
        # Every image decoded: its bytes go to disk (an fsync each) while the engine embeds.
        kept = asyncio.ensure_future(
            rt.vectors.run(lambda: writer.keep_bytes(list(by_id.values())))
        )
        try:
            vectors = await sv.embedder.submit(plan.batch) if plan.fresh else None
        finally:
            await kept
        pairs = list(zip(plan.fresh, plan.sizes, strict=True))
        await rt.vectors.run(lambda: writer.add(physical, pairs, vectors, same, sv.version))
    return {
        "collection": name,
        "physical_collection": physical,
        "model_version": sv.version,
        "ids": [img.point_id for img in images],
        "images": [
            {
                "id": i.point_id,
                "sha256": i.sha256,
                "label": i.label,
                "source_uri": i.source_uri,
                "unchanged": i.point_id in stored,
            }
            for i in images
        ],
    }


async def _patch_body(request: Request) -> LabelPatch:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        message = f'content type {ctype or "none"!r}: send application/json {{"label": …}}'
        raise ApiError(415, "unsupported_media_type", message)
    body = await read_body(request, PATCH_BYTES)
    return LabelPatch.model_validate_json(body or b"{}")  # ValidationError → 422


@router.patch(
    "/{name}/images/{image_id:path}",
    summary="Set or remove an image's label",
    response_model=ImageInfo,
    responses=errors(*AUTH, 404, 409, 422, 503, 507),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": LabelPatch.model_json_schema(),
                    "examples": {
                        "set": {"value": {"label": "cat"}},
                        "remove": {"value": {"label": None}},
                    },
                }
            },
        }
    },
    dependencies=[WriteDep],
)
async def relabel(
    request: Request, rt: RuntimeDep, name: NameArg, image_id: IdArg
) -> dict[str, Any]:
    """`{"label": "cat"}` sets it, `{"label": null}` removes it (the image stays, out of the
    k-NN vote). Takes effect for the next /classify. 404 for an unknown image."""
    name = _name(name)
    patch = await _patch_body(request)
    pid = query_id(image_id)
    writer = _writer(rt)
    async with rt.writes.entry():
        physical = await rt.vectors.run(lambda: writer.target(name, rt.serving.version))
        payload = await rt.vectors.run(lambda: writer.relabel(physical, pid, patch.label))
    return {"id": pid, "collection": name, "label": payload.get("label"), "uri": payload.get("uri")}


@router.delete(
    "/{name}/images/{image_id:path}",
    summary="Delete an image from a collection",
    response_model=Deleted,
    responses=errors(*AUTH, 404, 409, 422, 503, 507),
    dependencies=[WriteDep],
)
async def delete_image(rt: RuntimeDep, name: NameArg, image_id: IdArg) -> dict[str, Any]:
    """Removes the point (from search, classify and thumbnails at once) and, for an uploaded
    image that no other point of any collection uses, its stored bytes. 404 when not there."""
    name = _name(name)
    pid = query_id(image_id)
    writer = _writer(rt)
    async with rt.writes.entry():
        physical = await rt.vectors.run(lambda: writer.target(name, rt.serving.version))
        gone = await rt.vectors.run(lambda: writer.delete(physical, pid))
    return {"id": pid, "collection": name, "deleted": True, "bytes_deleted": gone}
