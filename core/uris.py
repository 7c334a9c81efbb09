"""Source URIs of indexed images: a file path, or `tar://<archive>#<member>` for a tar member.

The indexer writes them into the payload; the API reads an indexed image back through the same
function, so both agree on what a URI means.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

TAR_SCHEME = "tar://"


def split_tar(uri: str) -> tuple[str, str]:
    """`tar://<archive>#<member>` → (archive, member)."""
    archive, _, member = uri[len(TAR_SCHEME) :].partition("#")
    return archive, member


def reader(uri: str) -> Callable[[], bytes]:
    """A function reading the bytes behind a URI (a file path or tar://archive#member).

    Args:
        uri: a payload `uri` as the indexer writes it.
    Raises (when called):
        OSError: the file or member is missing or unreadable.
    """
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
