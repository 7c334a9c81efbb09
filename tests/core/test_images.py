import io

import numpy as np
import pytest
from PIL import Image

from core.images import ImageRejected, decode_image, preprocess


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "data",
    [
        _bytes(RGB, "PNG"),
        _bytes(RGB, "JPEG", quality=90),
        _bytes(RGB, "JPEG", progressive=True),
        _bytes(RGB, "WEBP"),
        _bytes(RGB, "BMP"),
        _bytes(RGB, "TIFF"),
        _bytes(RGB.convert("CMYK"), "JPEG"),
        _bytes(RGB.convert("L"), "PNG"),
        _bytes(RGB.convert("P"), "GIF"),
        _bytes(RGB.convert("RGBA"), "PNG"),
        _bytes(Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)), "PNG"),
    ],
    ids=[
        "png",
        "jpeg",
        "progressive",
        "webp",
        "bmp",
        "tiff",
        "cmyk",
        "gray",
        "palette-gif",
        "rgba",
        "16bit",
    ],
)
def test_formats_decode_to_rgb(data):
    img = decode_image(data, max_pixels=10_000)
    assert img.mode == "RGB" and img.size == (32, 24)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img = decode_image(data, max_pixels=100)
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 50 and b < 50


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    out = decode_image(_bytes(img, "JPEG", exif=exif), max_pixels=10_000)
    assert out.size == (20, 40)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"GIF89a not really", "invalid"),
        (_bytes(RGB, "PNG")[:50], "invalid"),
        (_bytes(Image.new("L", (4000, 3000)), "PNG"), "too_large"),  # 12 Mpx, tiny file
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.reason == reason


def test_byte_limit():
    with pytest.raises(ImageRejected, match="bytes"):
        decode_image(_bytes(RGB, "PNG"), max_pixels=10_000, max_bytes=100)


def test_preprocess_matches_the_dino_eval_transform():
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    arr = preprocess(img, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    assert np.allclose(arr[0], 1.0) and np.allclose(arr[1], -1.0)
