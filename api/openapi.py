"""What the OpenAPI document says about errors: every status a route can answer, each with the
one error shape, so that a client generated from the schema knows them all."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str  # stable, snake_case: clients branch on it
    message: str  # for people: what went wrong and what to do


class ErrorBody(BaseModel):
    """Every 4xx and 5xx: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


DESCRIPTIONS = {
    401: "no API key: DINOSERVE_API_KEY (or, for /admin, DINOSERVE_ADMIN_API_KEY) is set",
    403: "wrong API key (or admin routes, or anonymous writes, off)",
    404: "unknown collection or image",
    409: "the collection has no labels or another model version's embeddings; a refresh runs",
    413: "over DINOSERVE_MAX_UPLOAD_BYTES, DINOSERVE_MAX_PIXELS or DINOSERVE_MAX_BATCH_IMAGES",
    415: "not multipart/form-data or application/json",
    422: "a bad parameter, body or image",
    503: "Qdrant unreachable, a collection building its index, or shutting down (with Retry-After)",
    507: (
        "the disk under the embedded store is full (DINOSERVE_QDRANT__MIN_FREE_MB), or the"
        " uploaded images fill DINOSERVE_BLOB_MAX_BYTES: nothing written, reads go on"
    ),
}
AUTH = (401, 403)
UPLOAD = (413, 415, 422)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses, each with the error schema.

    A 422 given here replaces FastAPI's own (whose `detail` list is not what is sent).
    """
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in sorted(set(statuses))}


def with_limits(doc: dict[str, Any], max_images: int) -> dict[str, Any]:
    """The document with the limits of these settings: at most DINOSERVE_MAX_BATCH_IMAGES
    images per request (`maxItems` of every `images` array of a request body)."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                images = media.get("schema", {}).get("properties", {}).get("images")
                if images is not None and images.get("type") == "array":
                    images["maxItems"] = max_images
    return doc
