"""`POST /embed`: one or more images → L2-normalised embeddings of the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.body_docs import body_doc
from api.deps import ServingDep, UploadBody, upload_body
from api.openapi import AUTH, UPLOAD, errors
from api.params import EmbedParams

router = APIRouter(tags=["embeddings"])
# /embed takes no parameters: the body's fields are merged all the same, to refuse unknown ones.
EmbedBody = Annotated[UploadBody[EmbedParams], Depends(upload_body(EmbedParams))]


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
async def embed(sv: ServingDep, body: EmbedBody) -> JSONResponse:
    """Embeddings of up to DINOSERVE_MAX_BATCH_IMAGES images (multipart `images` files or JSON
    `{"images": [base64, …]}`), in the order sent; each has unit L2 norm."""
    vectors = await sv.embed(body.upload.images)
    # JSONResponse directly: FastAPI's encoder walks every float and is slow on large batches.
    return JSONResponse(
        {
            "model_version": sv.version,
            "dim": int(vectors.shape[1]),
            "count": len(vectors),
            "embeddings": vectors.tolist(),
        }
    )
