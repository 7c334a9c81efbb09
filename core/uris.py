"""Source URIs of indexed images: a file path, `tar://<archive>#<member>` for a tar member, or
`blob://<sha256>` for an image uploaded over HTTP (kept in DINOSERVE_BLOB_DIR, core.blobs).

The indexer writes them into the payload; the API reads an indexed image back through the same
function, so both agree on what a URI means.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

from core.blobs import Blobs, is_blob, sha_of

TAR_SCHEME = "tar://"


def split_tar(uri: str) -> tuple[str, str]:
    """`tar://<archive>#<member>` → (archive, member)."""
    archive, _, member = uri[len(TAR_SCHEME) :].partition("#")
    return archive, member


def reader(uri: str, blob_dir: Path | None = None) -> Callable[[], bytes]:
    """A function reading the bytes behind a URI (a file path, tar://archive#member or
    blob://sha256).

    Args:
        uri: a payload `uri` as the indexer or the upload route writes it.
        blob_dir: DINOSERVE_BLOB_DIR, where `blob://` URIs are read (None: they are not).
    Raises (when called):
        OSError: the file, member or blob is missing or unreadable.
    """
    if is_blob(uri):

        def read_blob() -> bytes:
            if blob_dir is None:
                raise OSError(f"{uri}: no blob directory to read uploaded images from")
            return Blobs(blob_dir).read(sha_of(uri))

        return read_blob
    if uri.startswith(TAR_SCHEME):
        archive, member = split_tar(uri)

        def read_member() -> bytes:
            try:
                with tarfile.open(archive) as tar:
                    f = tar.extractfile(member)
                    if f is None:
                        raise OSError(f"{member} is not a file in {archive}")
                    return f.read()
            except KeyError as exc:  # no such member
                raise OSError(f"{member} is not in {archive}") from exc
            except tarfile.TarError as exc:
                raise OSError(f"{archive}: {exc}") from exc

        return read_member
    return Path(uri).read_bytes
