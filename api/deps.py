"""Route dependencies: how a route reaches the runtime objects built in the lifespan
(`Annotated` types: `RuntimeDep`, `ServingDep`, `StoreDep`, …), the request body of a route
that takes images (`upload_body`), and the check every route makes of its query string.

An upload route declares `body: UploadBody[P]` and gets the images read within the limits
(`read_upload`, below) and its parameters `P`, the query string completed by the body's fields. One
dependency gives both: FastAPI collects a failed dependency's errors once per path that reaches
it, so an upload and a parameters dependency that both needed the query would report a bad
query twice. The query, and any `after` dependency (the collection in the path), are validated
before the body is read: a bad parameter is answered 422 without reading megabytes.

Uploads are read within limits: multipart files or base64 JSON; bytes, count and pixels. The
body is read by hand (not by FastAPI's form parsing) so that its size is checked twice: the
declared Content-Length before reading anything, and the bytes actually received while reading,
which stops a client that lies or streams without a length; a multipart body is then split by
python-multipart's parser, with limits of its own on files, fields and field sizes. The byte
limit is on the image bytes a request carries; a base64 JSON body may be 4/3 of that on the
wire. Pixels are checked from the image header before decoding (decompression bombs), see
core.images.decode_image.

The body reader is here because it is a route dependency: what a route is given, in one module
(one file less on every upload's path). Nothing here builds an HTTP error: `BadUpload` (and its
kinds) and `NotStarted` are translated by api/errors.py's table.
"""

# No `from __future__ import annotations`: FastAPI reads the signature of the dependency made
# by `upload_body`, whose query model is the factory's argument, not a name it could look up
# later.

import base64
import binascii
import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from api.metrics import Metrics
from api.runtime import Runtime
from api.serving import Serving
from api.vectors import Vectors
from core.package import PackageMeta

P = TypeVar("P", bound=BaseModel)
IMAGE_FIELDS = ("images", "image")
_SLACK = 64 * 1024  # multipart boundaries, headers and JSON punctuation; the most of one field
_MAX_FIELDS = 64  # non-file parts of a multipart body


class Part(bytes):
    """An uploaded image's bytes with the name the client gave it (its file name, or its place
    in a JSON body), so that an error about one of several images says which."""

    name: str

    def __new__(cls, data: bytes, name: str) -> "Part":
        part = super().__new__(cls, data)
        part.name = name
        return part

    def __reduce__(self) -> tuple[type["Part"], tuple[bytes, str]]:
        # Pickled to the engine process (DINOSERVE_SERVE__WORKERS > 1) with its name.
        return (Part, (bytes(self), self.name))


class BadUpload(Exception):
    """A request body the service cannot take; `code` says why (api/errors.py: 422)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple:
        return type(self), (self.code, str(self))


class UploadTooLarge(BadUpload):
    """Over DINOSERVE_MAX_UPLOAD_BYTES or DINOSERVE_MAX_BATCH_IMAGES (413)."""


class UnsupportedUpload(BadUpload):
    """Neither multipart/form-data nor JSON (415)."""


@dataclass
class Upload:
    """What a request carried: raw image bytes in order, and its scalar fields (form or JSON)."""

    images: list[bytes]
    fields: dict[str, str] = field(default_factory=dict)
    # Per-image values of the names an endpoint takes as lists (`labels`, `uris` of POST
    # /collections/{name}/images): repeated form fields or JSON arrays; "" / null = none.
    lists: dict[str, list[str | None]] = field(default_factory=dict)


def _too_large(what: str, max_bytes: int) -> UploadTooLarge:
    """The one message of a too large request: the size, the limit, its scope and setting."""
    return UploadTooLarge(
        "upload_too_large",
        f"{what} is over the limit of {max_bytes} bytes of images per request "
        "(DINOSERVE_MAX_UPLOAD_BYTES); send fewer or smaller images per request",
    )


def _too_many(count: str, max_images: int) -> UploadTooLarge:
    """The one message of too many images: how many were sent, the limit and its setting."""
    return UploadTooLarge(
        "too_many_images",
        f"{count} images are over the limit of {max_images} images per request "
        "(DINOSERVE_MAX_BATCH_IMAGES)",
    )


async def read_body(request: Request, max_image_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds what the limit allows.

    Args:
        request: the incoming request.
        max_image_bytes: DINOSERVE_MAX_UPLOAD_BYTES; the wire may carry 4/3 of it (base64).
    """
    limit = max_image_bytes * 4 // 3 + _SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"the request body of {declared} bytes", max_image_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"the request body (over {limit} bytes)", max_image_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(
    request: Request, max_bytes: int, max_images: int, lists: tuple[str, ...] = ()
) -> Upload:
    """Images (multipart `images`/`image` files, or JSON base64) and scalar fields of a request.

    Args:
        request: the incoming request.
        max_bytes: most image bytes per request (DINOSERVE_MAX_UPLOAD_BYTES).
        max_images: most images per request (DINOSERVE_MAX_BATCH_IMAGES).
        lists: names taken as one value per image (see `Upload.lists`).
    Raises:
        UploadTooLarge: too large or too many; UnsupportedUpload: another content type;
            BadUpload: no or bad images.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = await _multipart(request, max_bytes, max_images, lists)
    elif ctype == "application/json" or ctype.endswith("+json"):
        upload = _json(await read_body(request, max_bytes), lists)
    else:
        raise UnsupportedUpload(
            "unsupported_media_type",
            f"content type {ctype or 'none'!r}: send multipart/form-data files or "
            'application/json {"images": [base64, …]}',
        )
    if not upload.images:
        raise BadUpload(
            "no_image", "no image: send multipart file(s) 'images' or JSON base64 'images'"
        )
    if len(upload.images) > max_images:
        raise _too_many(str(len(upload.images)), max_images)
    total = sum(len(b) for b in upload.images)
    if total > max_bytes:
        raise _too_large(f"{total} bytes of images", max_bytes)
    return upload


def _decode(raw: bytes | bytearray, charset: str) -> str:
    """A form name or value as text: the body's charset, else Latin-1 (which never fails)."""
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def _malformed(reason: str) -> BadUpload:
    return BadUpload("invalid_multipart", f"malformed multipart body: {reason}")


@dataclass
class _Part:
    """A multipart part as it arrives: its Content-Disposition, then its name and bytes."""

    disposition: bytes = b""
    name: str = ""
    filename: str | None = None  # set: a file part
    data: bytearray = field(default_factory=bytearray)
    value: str = ""  # a field's data as text


class _FormReader:
    """The callbacks of python-multipart's push parser: the parts of a body, kept in memory, and
    the limits on them checked as they arrive.

    Not Starlette's `Request.form()`: it turns each of its limits into the same 400 with its own
    text, so telling too many files (413 `too_many_images`) from a malformed body (422) would
    mean matching that text again, and it spools every file to a temporary file that would be
    read straight back. The body is already bounded by `read_body`, so parts stay bytes here.
    """

    def __init__(self, charset: str, max_images: int) -> None:
        self.charset, self.max_images = charset, max_images
        self.parts: list[_Part] = []
        self._part = _Part()
        self._header_name, self._header_value = b"", b""
        self._files = self._fields = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_name_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _header_name_data(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._part.disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._part.disposition)
        if b"name" not in options:
            raise _malformed('The Content-Disposition header field "name" must be provided.')
        self._part.name = _decode(options[b"name"], self.charset)
        if b"filename" in options:
            self._files += 1
            # One file over the limit is still read, so that its error can say how many came.
            if self._files > self.max_images + 1:
                raise _too_many(f"more than {self.max_images}", self.max_images)
            self._part.filename = _decode(options[b"filename"], self.charset)
        else:
            self._fields += 1
            if self._fields > _MAX_FIELDS:
                raise _malformed(f"Too many fields. Maximum number of fields is {_MAX_FIELDS}.")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.filename is None and len(part.data) + end - start > _SLACK:
            raise _malformed(f"Part exceeded maximum size of {_SLACK // 1024}KB.")
        part.data += data[start:end]

    def _end(self) -> None:
        if self._part.filename is None:
            self._part.value = _decode(self._part.data, self.charset)
        self.parts.append(self._part)


def _form(ctype_header: str, body: bytes, max_images: int) -> list[_Part]:
    """The parts of a multipart/form-data body (already read within the size limit)."""
    _, params = parse_options_header(ctype_header)
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    if b"boundary" not in params:
        raise _malformed("Missing boundary in multipart.")
    reader = _FormReader(charset, max_images)
    try:
        parser = MultipartParser(params[b"boundary"], reader.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # a bad boundary, a part that does not follow the format
        raise _malformed("Invalid multipart data.") from exc
    return reader.parts


async def _multipart(
    request: Request, max_bytes: int, max_images: int, lists: tuple[str, ...] = ()
) -> Upload:
    body = await read_body(request, max_bytes)
    parts = _form(request.headers.get("content-type", ""), body, max_images)
    upload = Upload(images=[])
    for part in parts:
        name = part.name
        if part.filename is not None:
            if name not in IMAGE_FIELDS:
                raise BadUpload("unexpected_field", f"file field {name!r}: send images as 'images'")
            n = len(upload.images) + 1
            upload.images.append(Part(bytes(part.data), part.filename or f"{name} #{n}"))
        elif name in lists:
            upload.lists.setdefault(name, []).append(part.value or None)
        elif name in upload.fields:
            raise BadUpload("invalid_parameter", f"field {name[:64]!r} given twice")
        else:
            upload.fields[name] = part.value
    return upload


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadUpload("invalid_base64", f"{where} must be a base64 string")
    if value.startswith("data:"):  # a data URL from a browser: data:image/png;base64,….
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadUpload("invalid_base64", f"{where} is not valid base64: {exc}") from exc


def _json(body: bytes, lists: tuple[str, ...] = ()) -> Upload:
    try:
        doc = json.loads(body)
    except RecursionError as exc:  # [[[[…]]]] deeper than the parser's stack
        raise BadUpload("invalid_json", "the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise BadUpload("invalid_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadUpload("invalid_json", "the body must be a JSON object")
    images: list[bytes] = []
    doc = {k: v for k, v in doc.items() if v is not None}  # null: as if not given
    if isinstance(doc.get("images"), list):
        images = [
            Part(_b64(v, f"images[{i}]"), f"images[{i}]") for i, v in enumerate(doc["images"])
        ]
    elif "images" in doc:
        raise BadUpload("invalid_json", "'images' must be a list of base64 strings")
    if "image" in doc:
        images.append(Part(_b64(doc["image"], "image"), "image"))
    fields, per_image = {}, {}
    for k, v in doc.items():
        if k in IMAGE_FIELDS:
            continue
        if k in lists:
            if not isinstance(v, list) or not all(x is None or isinstance(x, str) for x in v):
                raise BadUpload("invalid_parameter", f"{k!r} must be a list of strings")
            per_image[k] = [x or None for x in v]
            continue
        if not isinstance(v, str | int | float | bool):
            raise BadUpload("invalid_parameter", f"{k[:64]!r} must be a string or a number")
        # JSON numbers and booleans are validated like query strings (pydantic's lax mode)
        fields[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return Upload(images, fields, per_image)


def single(upload: Upload) -> bytes:
    """The one image of an endpoint that takes one (`image`)."""
    if len(upload.images) != 1:
        raise BadUpload("one_image", f"send exactly one image, got {len(upload.images)}")
    return upload.images[0]


def merge_params(query: P, fields: Mapping[str, str], request: Request) -> P:
    """Scalar parameters from the query string, completed by form fields / JSON keys.

    A name given in the query string wins; the body fills in names the query does not give.

    Raises:
        pydantic.ValidationError: a body value is out of range (→ 422).
        BadUpload: a field the endpoint does not take.
    """
    model = type(query)
    unknown = [k for k in fields if k not in model.model_fields]
    if unknown:
        known = ", ".join(model.model_fields) or "none"
        raise BadUpload(
            "invalid_parameter",
            f"unknown field {unknown[0][:64]!r} (parameters of this endpoint: {known})",
        )
    if not fields:
        return query
    # Every value given must be valid, also one that the query string overrides.
    model.model_validate({**query.model_dump(), **fields})
    extra = {k: v for k, v in fields.items() if k not in request.query_params}
    if not extra:
        return query
    return model.model_validate({**query.model_dump(), **extra})


class NotStarted(Exception):
    """A request reached an app whose lifespan has not run (api/errors.py: 503 not_ready)."""


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.state, "runtime", None)
    if runtime is None:  # only without the lifespan (an app used without starting it)
        raise NotStarted("the service is not started")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_serving(rt: RuntimeDep) -> AsyncIterator[Serving]:
    """The served model state, taken ONCE per request and held until it ends, so a refresh
    that swaps engines meanwhile neither changes nor closes what this request uses (async: the
    count changes on the event loop only)."""
    serving = rt.serving
    serving.users += 1
    try:
        yield serving
    finally:
        serving.users -= 1


def get_meta(rt: RuntimeDep) -> PackageMeta:
    return rt.meta


def get_vectors(rt: RuntimeDep) -> Vectors:
    return rt.vectors


def get_metrics(rt: RuntimeDep) -> Metrics:
    return rt.metrics


MetaDep = Annotated[PackageMeta, Depends(get_meta)]
StoreDep = Annotated[Vectors, Depends(get_vectors)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServingDep = Annotated[Serving, Depends(get_serving)]


def single_valued(request: Request) -> None:
    """Refuse a query parameter given twice (`k=1&k=1000`): which one wins is ambiguous."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        shown = ", ".join(repr(n[:64]) for n in repeated[:5])
        raise BadUpload("invalid_parameter", f"parameter given more than once: {shown}")


@dataclass
class UploadBody(Generic[P]):
    """What an upload route was sent: the images (and per-image lists), and its parameters."""

    upload: Upload
    params: P


def _nothing() -> None:
    """The default `after`: nothing else to check before the body."""


def upload_body(
    params: type[P], lists: tuple[str, ...] = (), after: Callable[..., Any] = _nothing
) -> Callable[..., Awaitable[UploadBody[P]]]:
    """The dependency that reads an upload route's body, for `Annotated[..., Depends(...)]`.

    Args:
        params: the route's parameters (query string, or the same names in the body).
        lists: names taken as one value per image (see `Upload.lists`).
        after: a dependency that must succeed before the body is read (e.g. the path's
            collection name), as FastAPI checks a dependency's own before calling it.
    """

    async def read(
        request: Request,
        rt: RuntimeDep,
        _: Annotated[Any, Depends(after)],
        query: Annotated[params, Query()],  # type: ignore[valid-type]
    ) -> UploadBody[P]:
        s = rt.settings
        upload = await read_upload(request, s.max_upload_bytes, s.max_batch_images, lists)
        return UploadBody(upload, merge_params(query, upload.fields, request))

    return read
