"""Images a service meets in the wild, made in memory: every mode and container Pillow writes,
EXIF rotation, animation, progressive JPEG, and hostile files (bombs, slivers, lies)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def gradient(w: int = 48, h: int = 32) -> Image.Image:
    """An RGB image with content (a flat one hides channel mix-ups)."""
    x = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32)[None, :], (h, w))
    y = np.broadcast_to(np.linspace(0, 255, h, dtype=np.float32)[:, None], (h, w))
    return Image.fromarray(np.dstack([x, y, np.full((h, w), 128, np.float32)]).astype(np.uint8))


def exotic() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name → (encoded bytes, the (width, height) the service must see after EXIF rotation)."""
    g = gradient()
    size = g.size
    rgba = g.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(size))
    i16 = Image.fromarray(np.asarray(g.convert("L"), np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    frames = [g, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), g.convert("L").convert("RGB")]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    apng = io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:], duration=50)
    pal_t = g.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb.png": (encode(g, "PNG"), size),
        "rgba.png": (encode(rgba, "PNG"), size),
        "la.png": (encode(rgba.convert("LA"), "PNG"), size),
        "grayscale.png": (encode(g.convert("L"), "PNG"), size),
        "bilevel.png": (encode(g.convert("1"), "PNG"), size),
        "palette.png": (encode(g.convert("P"), "PNG"), size),
        "palette-transparent.png": (encode(pal_t, "PNG", transparency=0), size),
        "16bit.png": (encode(i16, "PNG"), size),
        "cmyk.jpg": (encode(g.convert("CMYK"), "JPEG"), size),
        "grayscale.jpg": (encode(g.convert("L"), "JPEG"), size),
        "progressive.jpg": (encode(g, "JPEG", progressive=True, quality=80), size),
        "exif-rotated.jpg": (encode(g, "JPEG", exif=exif), (size[1], size[0])),
        "animated.gif": (anim.getvalue(), size),
        "animated.png": (apng.getvalue(), size),
        "rgba.webp": (encode(rgba, "WEBP", lossless=True), size),
        "cmyk.tiff": (encode(g.convert("CMYK"), "TIFF"), size),
        "float.tiff": (encode(g.convert("F"), "TIFF"), size),
        "int32.tiff": (encode(g.convert("I"), "TIFF"), size),
        "bmp": (encode(g, "BMP"), size),
        "ico": (encode(g.resize((32, 32)), "ICO", sizes=[(32, 32)]), (32, 32)),
    }


def png_header(w: int, h: int, bit_depth: int = 8, color: int = 2) -> bytes:
    """A PNG whose header claims w × h pixels, with a tiny (wrong) body: a lie or a bomb."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + crc


def bomb(side: int = 8000) -> bytes:
    """A real, valid greyscale PNG of side² pixels that compresses to some 10s of KB."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def hostile() -> dict[str, bytes]:
    """name → bytes that are not a usable image (each must be answered 4xx, never 500)."""
    good = encode(gradient(), "PNG")
    jpeg = encode(gradient(), "JPEG")
    return {
        "zero-bytes": b"",
        "one-byte": b"\x89",
        "text": b"hello, I am not an image",
        "html": b"<!doctype html><script>alert(1)</script>",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip": b"PK\x03\x04" + b"\x00" * 60,
        "truncated.png": good[: len(good) // 2],
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "png-signature-only": good[:8],
        "corrupt-png-crc": good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],
        "zero-width.png": png_header(0, 10),
        "huge-dimensions.png": png_header(2**31 - 1, 2**31 - 1),
        "lying-header.png": png_header(4000, 4000),
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "gif-header-only": b"GIF89a\x10\x00\x10\x00\x00\x00\x00",
        "bmp-negative": b"BM" + b"\xff" * 60,
    }
