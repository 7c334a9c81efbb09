"""Upload bodies as dependencies: a route that takes images declares `body: UploadBody[P]` and
gets the images read within the limits (api/uploads.py) and its parameters `P`, the query
string completed by the body's fields.

One dependency gives both: FastAPI collects a failed dependency's errors once per path that
reaches it, so an upload and a parameters dependency that both needed the query would report a
bad query twice. The query, and any `after` dependency (the collection in the path), are
validated before the body is read: a bad parameter is answered 422 without reading megabytes.
"""

# No `from __future__ import annotations`: FastAPI reads the signature of the dependency made
# below, whose query model is the factory's argument, not a name it could look up later.

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel

from api.deps import RuntimeDep
from api.uploads import Upload, merge_params, read_upload

P = TypeVar("P", bound=BaseModel)


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
