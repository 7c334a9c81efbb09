"""The wire between HTTP worker processes and the engine process: length-prefixed pickle frames
over a Unix socket in a private (0700) folder of the service's own user.

pickle is safe here only because both ends are this service's own processes and the socket is
unreachable for anybody else; it carries numpy batches with a single copy and any exception the
engine side raises (so a worker re-raises the same ApiError/StoreError and answers as one
process would).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct

_HEADER = struct.Struct("!Q")
MAX_FRAME = 1 << 31  # 2 GiB: far above a batch of 1024 preprocessed 224-px images (0.6 GB)


class WireError(ConnectionError):
    """The other side went away or sent something that is not a frame."""


def pack(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (most do), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # any failure to rebuild it: send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _checked(size: int) -> int:
    if size > MAX_FRAME:
        raise WireError(f"a frame of {size} bytes is over the limit")
    return size


async def read_frame(reader: asyncio.StreamReader) -> object:
    """The next object; raises asyncio.IncompleteReadError at a clean end of stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(_checked(size)))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise WireError("the engine process closed the connection")
        got += k
    return bytes(buf)


def call(sock: socket.socket, message: object) -> object:
    """Send one request frame on a blocking socket and return the reply frame's object."""
    sock.sendall(pack(message))
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return pickle.loads(_recv_exactly(sock, _checked(size)))
