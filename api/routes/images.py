"""`GET /images/{id}`: a thumbnail of an indexed image, found through its point's payload — the
client names a point, never a path, so nothing outside the collection can be read."""

from __future__ import annotations

import io
import uuid
from pathlib import Path as PathLike
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep, StoreDep
from api.errors import ApiError
from api.openapi import AUTH, errors
from api.params import ImageParams
from core.images import ImageRejected, decode_image
from core.uris import reader

router = APIRouter(tags=["images"])


def thumbnail(uri: str, max_pixels: int, side: int, blob_dir: PathLike | None = None) -> bytes:
    """The image behind `uri` as a JPEG whose longer side is at most `side` pixels.

    Raises:
        ApiError: 404 when the source is gone or no longer a readable image.
    """
    try:
        img = decode_image(reader(uri, blob_dir)(), max_pixels)  # blob://: uploaded images
    except (OSError, ImageRejected) as exc:
        raise ApiError(
            404, "image_unavailable", f"the indexed image can no longer be read: {exc}"
        ) from exc
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


@router.get(
    "/images/{image_id}",
    summary="Thumbnail of an indexed image",
    responses={
        200: {"content": {"image/jpeg": {}}},
        304: {"description": "not modified"},
        **errors(*AUTH, 404, 422, 503),
    },
    response_class=Response,
)
async def image(
    request: Request,
    rt: RuntimeDep,
    vectors: StoreDep,
    image_id: Annotated[str, Path(description="point id (as in search results)")],
    params: Annotated[ImageParams, Query()],
) -> Response:
    """JPEG thumbnail (longer side ≤ DINOSERVE_SERVE__THUMBNAIL_PX) of a point of the collection;
    404 for ids that are not in it."""
    try:
        pid = str(uuid.UUID(image_id))
    except ValueError:
        raise ApiError(404, "unknown_image", f"{image_id!r} is not a point id") from None
    physical = await vectors.physical(params.collection or rt.settings.collection, None)
    point = await vectors.point(physical, pid)
    uri = (point.payload or {}).get("uri") if point is not None else None
    if not uri:
        raise ApiError(404, "unknown_image", f"no indexed image {pid} in the collection")
    side = rt.settings.serve.thumbnail_px
    # The sha256 of the indexed bytes identifies the content: browsers revalidate cheaply.
    etag = f'"{(point.payload or {}).get("sha256", pid)[:32]}-{side}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=300"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    data = await run_in_threadpool(
        thumbnail, uri, rt.settings.max_pixels, side, rt.settings.blob_dir
    )
    return Response(data, media_type="image/jpeg", headers=headers)
