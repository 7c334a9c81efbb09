"""Synthetic labelled images: 10 classes of shapes on textured backgrounds.

A class is a shape with a typical foreground hue (each class has its own hue, ± a little), the way
real classes have typical colours; size, position, rotation, saturation, brightness and the
background (stripes, smooth noise or a gradient in random colours) are random. The background is
what the two views of an image share most, so it is the shortcut DINO must not settle on; the
classes are learnable from an image collection without labels. Used by the tests and the demo,
so nothing needs a download; with `masks=True` each image's exact object mask is written beside
it (`<folder>-masks/`), for `dinoserve eval masks` and the page's true-mask view.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.scenes import masks_dir_for  # the one place the masks' layout is named

CLASSES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hexagon",
    "xmark",
    "halfmoon",
)


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float = 1.0):
    pts = []
    for i in range(n * (2 if inner != 1.0 else 1)):
        rad = r if inner == 1.0 or i % 2 == 0 else r * inner
        a = rot + i * math.pi / (n if inner != 1.0 else n / 2)
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _bar_cross(cx: float, cy: float, r: float, rot: float, width: float):
    bars = []
    for k in range(2):
        a = rot + k * math.pi / 2
        dx, dy = math.cos(a), math.sin(a)
        px, py = -dy * width / 2, dx * width / 2
        bars.append(
            [
                (cx - dx * r + px, cy - dy * r + py),
                (cx + dx * r + px, cy + dy * r + py),
                (cx + dx * r - px, cy + dy * r - py),
                (cx - dx * r - px, cy - dy * r - py),
            ]
        )
    return bars


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(3)
    c1, c2 = rng.integers(0, 140, 3), rng.integers(0, 140, 3)  # darker than the shapes
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # stripes at a random angle and frequency
        a, f = rng.uniform(0, math.pi), rng.uniform(2, 6)
        t = (np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a))) + 1) / 2
    elif kind == 1:  # smooth noise
        small = rng.random((4, 4))
        t = (
            np.asarray(
                Image.fromarray((small * 255).astype(np.uint8)).resize(
                    (size, size), Image.Resampling.BICUBIC
                ),
                np.float64,
            )
            / 255
        )
    else:  # gradient
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c1[None, None] * t[..., None] + c2[None, None] * (1 - t[..., None])
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_shape(cls: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One image of class `cls` (index into CLASSES)."""
    return draw_shape_and_mask(cls, rng, size)[0]


def draw_shape_and_mask(
    cls: int, rng: np.random.Generator, size: int = 32
) -> tuple[Image.Image, Image.Image]:
    """One image of class `cls` and its exact object mask ("L", 255 = the shape's pixels)."""
    img = _background(rng, size)
    hue = (cls / len(CLASSES) + rng.normal(0, 0.02)) % 1.0
    sat, val = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
    color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
    r = rng.uniform(0.25, 0.42) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    name = CLASSES[cls]
    # Drawn after rot, as before masks existed, so a seed still gives the same images.
    tilt = rng.uniform(-0.15, 0.15) if name in ("cross", "xmark") else 0.0

    def paint(d: ImageDraw.ImageDraw, fill) -> None:
        if name == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif name == "square":
            d.polygon(_polygon(cx, cy, r * 1.1, 4, rot), fill=fill)
        elif name == "triangle":
            d.polygon(_polygon(cx, cy, r * 1.15, 3, rot), fill=fill)
        elif name == "diamond":
            pts = _polygon(cx, cy, r, 4, 0)
            d.polygon([(cx + (x - cx) * 0.6, y) for x, y in pts], fill=fill)
        elif name in ("cross", "xmark"):
            base = 0.0 if name == "cross" else math.pi / 4
            for bar in _bar_cross(cx, cy, r, base + tilt, r * 0.5):
                d.polygon(bar, fill=fill)
        elif name == "ring":
            w = max(2, round(r * 0.35))
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=w)
        elif name == "star":
            d.polygon(_polygon(cx, cy, r * 1.15, 5, rot, inner=0.45), fill=fill)
        elif name == "hexagon":
            d.polygon(_polygon(cx, cy, r, 6, rot), fill=fill)
        elif name == "halfmoon":
            start = math.degrees(rot)
            d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=fill)

    paint(ImageDraw.Draw(img), color)
    mask = Image.new("L", (size, size), 0)
    paint(ImageDraw.Draw(mask), 255)
    return img.filter(ImageFilter.GaussianBlur(0.4)), mask


def make_synthetic(
    out_dir: str | Path,
    n_per_class: int,
    size: int = 32,
    seed: int = 0,
    fmt: str = "png",
    masks: bool = False,
) -> Path:
    """Write `out_dir/<class>/<nnnnn>.<fmt>` for every class; returns out_dir.

    Args:
        out_dir: destination folder (created).
        n_per_class: images per class.
        size: square image size in pixels.
        seed: the same seed gives the same images.
        fmt: "png" or "jpg".
        masks: also write each image's object mask as `<out_dir>-masks/<class>/<nnnnn>.png`.
    """
    out = Path(out_dir)
    mask_dir = masks_dir_for(out)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if masks:
            (mask_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, mask = draw_shape_and_mask(c, rng, size)
            path = folder / f"{i:05d}.{fmt}"
            img.save(path, quality=92) if fmt == "jpg" else img.save(path)
            if masks:
                mask.save(mask_dir / name / f"{i:05d}.png")
    return out
