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

import numpy as np

_HEADER = struct.Struct("!Q")
MAX_FRAME = 1 << 31  # 2 GiB: far above a batch of 1024 preprocessed 224-px images (0.6 GB)


class WireError(ConnectionError):
    """The other side went away or sent something that is not a frame."""


def pack(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class EngineUnavailable(ConnectionError):
    """The engine process cannot be reached (api/errors.py: 503 with Retry-After)."""


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


def _normalize_u8(u8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # The operations of core.images.normalize, element by element: the same float32 results.
    return (u8.astype(np.float32) / 255.0 - mean) / std


def encode_rows(batch: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple:
    """A preprocessed batch for the wire: as the uint8 pixels it was normalised from (4× fewer
    bytes) when they give back exactly the same floats, else as it is.

    Args:
        batch: (N, 3, H, W) float32 normalised rows.
        mean, std: the package's normalisation.
    """
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    u8 = np.rint((batch * s + m) * 255.0)
    if u8.min() >= 0 and u8.max() <= 255:
        u8 = u8.astype(np.uint8)
        if np.array_equal(_normalize_u8(u8, m, s), batch):
            return ("u8", u8)
    return ("f32", np.ascontiguousarray(batch, dtype=np.float32))


def decode_rows(payload: tuple, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The float32 batch `encode_rows` was given."""
    kind, rows = payload
    if kind == "f32":
        return rows
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return _normalize_u8(rows, m, s)
