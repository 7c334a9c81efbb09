"""`POST /attention`: the last block's CLS attention per head, as JSON or as a picture."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.body_docs import body_doc
from api.deps import ServingDep, UploadBody, single, upload_body
from api.openapi import AUTH, UPLOAD, errors
from api.params import AttentionParams
from api.render import render_attention
from core.attention import attention_mask, kept_mass
from core.images import resize_center_crop

router = APIRouter(tags=["attention"])
AttentionBody = Annotated[UploadBody[AttentionParams], Depends(upload_body(AttentionParams))]


@router.post(
    "/attention",
    summary="Self-attention maps of an image",
    responses={
        200: {"content": {"application/json": {}, "image/png": {}}},
        **errors(*AUTH, *UPLOAD, 503),
    },
    openapi_extra=body_doc(AttentionParams),
)
async def attention(sv: ServingDep, body: AttentionBody) -> Response:
    """`format=json`: per head an (h, w) grid of the CLS token's attention to each patch (sums
    to 1 per head; cells of `cell` input pixels, finer than a patch where the model's views
    stitch the map; smoothed by a Gaussian of σ = `smooth` cells where the package says so),
    the boolean mask of the cells that hold `threshold` of it, and the sizes.
    `format=png`: the image the model saw, a heat-map per head and the masks."""
    params = body.params
    (image,), batch = await sv.decode([single(body.upload)])
    att = (await sv.attender.submit(batch))[0]  # (heads, h, w)
    masks = attention_mask(att, params.threshold)
    meta = sv.meta
    if params.format == "png":

        def draw() -> bytes:
            seen = resize_center_crop(image, meta.img_size, meta.crop_pct)
            return render_attention(seen, att, masks, tile=max(meta.img_size, 128))

        return Response(await run_in_threadpool(draw), media_type="image/png")
    return JSONResponse(
        {
            "model_version": meta.version,
            "heads": int(att.shape[0]),
            "grid": [int(att.shape[1]), int(att.shape[2])],
            "patch_size": meta.patch_size,
            "cell": meta.map_cell,  # pixels of the input per grid cell
            "smooth": meta.views.smooth,  # σ (cells) of the map's Gaussian smoothing, 0: none
            "input_size": meta.img_size,
            "image_size": [image.width, image.height],
            "threshold": params.threshold,
            "attention": att.astype(np.float64).round(6).tolist(),
            "mask": masks.tolist(),
            "kept_mass": kept_mass(att, masks).round(6).tolist(),
        }
    )
