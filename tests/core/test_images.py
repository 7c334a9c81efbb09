import io

import numpy as np
import pytest
from PIL import Image

from core.images import (
    ImageRejected,
    decode_image,
    is_plain_rgb,
    normalize,
    preprocess,
    resize_center_crop,
)


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


@pytest.mark.parametrize(
    "shape", [(500, 375), (375, 500), (32, 32), (64, 64), (1000, 37), (257, 256), (4032, 3024)]
)
@pytest.mark.parametrize("size", [224, 64])
def test_crop_region_resize_matches_resizing_the_whole_image(shape, size):
    """Resampling only the crop's box gives the whole-image resize-then-crop, up to float
    rounding at tap boundaries: at most 2 of 255, on under 1 % of the values."""
    w, h = shape
    rng = np.random.default_rng(w * h)
    smooth = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(smooth).resize((w, h), Image.Resampling.BILINEAR)  # photo-like
    crop_pct = 0.875
    short = round(size / crop_pct)
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    whole = img.resize((nw, nh), Image.Resampling.BICUBIC)
    ref = np.asarray(whole.crop((left, top, left + size, top + size)), np.int16)
    out = np.asarray(resize_center_crop(img, size, crop_pct), np.int16)
    diff = np.abs(out - ref)
    assert out.shape == (size, size, 3) and diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_a_sliver_is_resized_without_its_whole_resize():
    img = Image.new("RGB", (40_000, 1), (10, 200, 30))
    out = np.asarray(resize_center_crop(img, 224, 0.875))
    assert out.shape == (224, 224, 3) and (out == (10, 200, 30)).all()


def test_normalize_gives_the_reference_formula_bit_for_bit():
    """The in-place arithmetic is the same float32 operations as the plain formula."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (np.asarray(img, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    out = normalize(img, mean, std)
    assert out.flags.c_contiguous and out.dtype == np.float32
    assert np.array_equal(out, ref.transpose(2, 0, 1))


def test_preprocess_applies_what_a_raw_image_still_needs():
    """preprocess skips the RGB copy only where there is nothing to do: an EXIF-rotated image
    opened by hand, or a grey one, is still turned and converted."""
    mean = std = (0.5, 0.5, 0.5)
    wide = Image.new("RGB", (40, 20), "white")
    wide.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: the black half ends up on top
    raw = Image.open(io.BytesIO(_bytes(wide, "JPEG", exif=exif)))
    turned = preprocess(raw, 16, mean, std, crop_pct=1.0)
    assert turned[0, :4].mean() < -0.8 and turned[0, -4:].mean() > 0.8
    plain = Image.open(io.BytesIO(_bytes(wide, "JPEG")))
    assert is_plain_rgb(plain) and not is_plain_rgb(raw)
    grey = preprocess(Image.new("L", (16, 16), 255), 16, mean, std, crop_pct=1.0)
    assert grey.shape == (3, 16, 16) and np.allclose(grey, 1.0)
