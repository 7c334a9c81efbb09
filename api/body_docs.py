"""How an upload route's request body is described in the OpenAPI document (`body_doc`): the
body is read by hand (api/deps.py, `read_upload`), so FastAPI cannot describe it."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image
from pydantic import BaseModel

# Base64 as `_b64` accepts it (optionally a data: URL): padded groups of four, not empty.
_B64 = "[A-Za-z0-9+/]"
BASE64_PATTERN = rf"^(data:[^,]*,)?(?:{_B64}{{4}})*(?:{_B64}{{2}}==|{_B64}{{3}}=|{_B64}{{4}})$"
# What an image field holds: a file Pillow decodes, not any bytes (anything else is a 422
# `invalid_image`). A multipart part stays `format: binary` (what clients, Swagger UI and
# schemathesis read as a file part) with the media type; a JSON string carries its own format,
# IMAGE_BASE64, so that a generator knows to encode an image (tests/security/schemathesis_hooks.py).
IMAGE_MEDIA_TYPE = "image/*"
IMAGE_BASE64 = "image-base64"
_IMAGE_KINDS = "PNG, JPEG, WebP, GIF, BMP, TIFF, … (what Pillow reads)"
_NOTES = ("title", "description", "default")


def _example_image() -> str:
    """The base64 of a 2 × 2 PNG: the JSON example, one a client can send as is."""
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 60, 40)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _or_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema in a JSON body, where null stands for not given (see _json)."""
    if {"type": "null"} in prop.get("anyOf", []):
        return prop
    notes = {k: v for k, v in prop.items() if k in _NOTES}
    rest = {k: v for k, v in prop.items() if k not in _NOTES}
    return {"anyOf": [rest, {"type": "null"}], **notes}


def body_doc(params: type[BaseModel], many: bool = False) -> dict[str, Any]:
    """OpenAPI description of the request body (parsed by hand, see read_upload): the image
    field(s) and, as the same names in the body, the endpoint's parameters; nothing else."""
    name = "images" if many else "image"
    fields = params.model_json_schema(ref_template="#/components/schemas/{model}")
    scalars = dict(fields.get("properties", {}))
    part: dict[str, Any] = {
        "type": "string",
        "format": "binary",
        "minLength": 1,
        "contentMediaType": IMAGE_MEDIA_TYPE,
        "description": f"an image file: {_IMAGE_KINDS}",
    }
    b64: dict[str, Any] = {
        "type": "string",
        "format": IMAGE_BASE64,
        "pattern": BASE64_PATTERN,
        "contentMediaType": IMAGE_MEDIA_TYPE,
        "description": f"an image file in base64 (or a data: URL): {_IMAGE_KINDS}",
        "examples": [_example_image()],
    }
    if many:
        part = {"type": "array", "items": part, "minItems": 1}
        b64 = {"type": "array", "items": b64, "minItems": 1}
    form = {
        "type": "object",
        "properties": {name: part, **scalars},
        "required": [name],
        "additionalProperties": False,
    }
    # In JSON a null is a key not given (see _json): a parameter may be null, any other key only
    # null.
    nullable = {k: _or_null(v) for k, v in scalars.items()}
    doc = {
        "type": "object",
        "properties": {name: b64, **nullable},
        "required": [name],
        "additionalProperties": {"type": "null"},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": doc},
            },
        }
    }
