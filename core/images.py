"""Image decoding and the evaluation/serving preprocessing, shared by training's k-NN eval,
the indexer and the API so that all three see an image exactly the same way."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-transpose and convert to 8-bit RGB (palette, alpha, CMYK, 16-bit, grayscale alike)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = max(float(arr.max()), 1.0)
        img = Image.fromarray((arr / (65535.0 if hi > 255 else 255.0) * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int, crop_pct: float) -> Image.Image:
    """Resize the shorter side to size / crop_pct (bicubic), then centre-crop size × size."""
    short = round(size / crop_pct)
    w, h = img.size
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 RGB image → float32 (3, H, W) normalised array."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(
    img: Image.Image,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float = 0.875,
) -> np.ndarray:
    """DINO's k-NN evaluation transform: RGB, resize, centre crop, normalise → (3, size, size)."""
    return normalize(resize_center_crop(to_rgb(img), size, crop_pct), mean, std)
