"""`GET /samples`: example images for a first try on the page (DINOSERVE_SAMPLES_DIR), each with
its true object mask when one lies beside it; `GET /samples/{name}` serves one of them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from api.deps import RuntimeDep
from api.openapi import AUTH, errors

router = APIRouter(tags=["samples"])


@router.get("/samples", summary="Example images to try", responses={**errors(*AUTH)})
async def samples(rt: RuntimeDep) -> dict:
    """`{"results": [{"name", "label", "image", "mask"}]}`: the URLs of each example image and of
    its mask (null without one), one of each class in turn. Empty when none is configured."""
    return {
        "results": [
            {
                "name": s.name,
                "label": s.label,
                "image": f"/samples/{s.name}",
                "mask": f"/samples/{s.name}?mask=true" if s.mask is not None else None,
            }
            for s in rt.samples.items
        ]
    }


@router.get(
    "/samples/{name:path}",
    summary="One example image, or its mask",
    responses={200: {"content": {"image/*": {}}}, **errors(*AUTH, 404, 422)},
    response_class=FileResponse,
)
async def sample(
    rt: RuntimeDep,
    name: Annotated[str, Path(description="a name GET /samples lists")],
    mask: Annotated[bool, Query(description="the true object mask instead")] = False,
) -> FileResponse:
    """The image file as it is on disk (or its mask: white = object)."""
    return FileResponse(rt.samples.file(name, mask))
