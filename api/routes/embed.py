"""`POST /embed`: one or more images → L2-normalised embeddings of the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import RuntimeDep, ServingDep
from api.openapi import AUTH, UPLOAD, errors
from api.params import EmbedParams
from api.uploads import body_doc, merge_params, read_upload

router = APIRouter(tags=["embeddings"])


class EmbedResponse(BaseModel):
    model_version: str
    dim: int
    count: int
    embeddings: list[list[float]]


@router.post(
    "/embed",
    summary="Embed images",
    responses={200: {"model": EmbedResponse}, **errors(*AUTH, *UPLOAD, 503)},
    openapi_extra=body_doc(EmbedParams, many=True),
)
async def embed(
    request: Request, rt: RuntimeDep, sv: ServingDep, query: Annotated[EmbedParams, Query()]
) -> JSONResponse:
    """Embeddings of up to DINOSERVE_MAX_BATCH_IMAGES images (multipart `images` files or JSON
    `{"images": [base64, …]}`), in the order sent; each has unit L2 norm."""
    s = rt.settings
    upload = await read_upload(request, s.max_upload_bytes, s.max_batch_images)
    merge_params(query, upload.fields, request)  # /embed takes no parameters: refuses unknown ones
    vectors = await sv.embed(upload.images)
    # JSONResponse directly: FastAPI's encoder walks every float and is slow on large batches.
    return JSONResponse(
        {
            "model_version": sv.version,
            "dim": int(vectors.shape[1]),
            "count": len(vectors),
            "embeddings": vectors.tolist(),
        }
    )
