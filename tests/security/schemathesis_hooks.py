"""schemathesis hooks: what the service's image fields hold, for its generators.

The OpenAPI document says an image field is an image file (`contentMediaType: image/*`; in
JSON the format `image-base64`), but no generator can make one from that alone: schemathesis
draws any bytes for `format: binary` and knows no `image-base64`. These strategies draw small
PNG and JPEG files of random size, mode and pixels, so that schema-valid requests are valid
requests and `positive_data_acceptance` holds without exceptions; negative cases still break
the schema around them.

Loaded by `schemathesis run` through `hooks` in schemathesis.toml (or SCHEMATHESIS_HOOKS=this
file), and by tests/security/test_fuzz.py the same way (schemathesis loads a file once).
"""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

# api.body_docs.IMAGE_BASE64, spelt out: `schemathesis run` loads this file without the
# repository on sys.path (test_fuzz.py fails if the two differ).
IMAGE_BASE64 = "image-base64"
MAX_SIDE = 24  # pixels: small, so a request stays fast and far under every limit
# Pillow mode → the formats that store it as is.
MODES = {"RGB": ("PNG", "JPEG"), "L": ("PNG", "JPEG"), "RGBA": ("PNG",), "P": ("PNG",)}


@st.composite
def image_files(draw: st.DrawFn, as_base64: bool = False) -> bytes | str:
    """A PNG or JPEG file of 1–MAX_SIDE pixels a side with random pixels: its bytes, or its
    base64 (bare or as the data: URL a browser's FileReader gives)."""
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    w, h = draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE))
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = draw(st.binary(min_size=w * h * bands, max_size=w * h * bands))
    out = io.BytesIO()
    Image.frombytes(mode, (w, h), pixels).save(out, fmt)
    if not as_base64:
        return out.getvalue()
    text = base64.b64encode(out.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{text}" if draw(st.booleans()) else text


# Every `format: binary` of this API is an image part (the schema's `contentMediaType`).
schemathesis.openapi.format("binary", image_files())
schemathesis.openapi.format(IMAGE_BASE64, image_files(as_base64=True))


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Only cases that a multipart body can carry as generated: a field whose value is an empty
    list sends no part at all, so the form on the wire is not the case (schemathesis would call
    `{"images": [a PNG], "x": []}` schema-violating while the request sent is valid)."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return True
    return all(value != [] for value in case.body.values())
