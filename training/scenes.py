"""Demo scenes: one shape object on a cluttered background, each image with its exact object mask.

Made for the demo and its shipped backbone, where DINO's two emergent properties (k-NN classes
without labels, and a last-layer CLS attention that outlines the object) have to be measurable
against a known truth. The choices, and why:

- **64 px images for a patch-8 ViT**: an 8 × 8 grid, the smallest on which an attention outline
  is worth looking at, and still cheap enough to train on two CPU cores in about an hour.
- **The object fills about 15–40 % of the image** (radius 0.27–0.40 of the side): large enough
  that a patch-level mask can match it (an 8-px patch is 1/64 of the image), small enough that
  the background is most of what a random crop sees.
- **Classes differ by shape only, and shape is the one thing two views of a scene share.** DINO
  learns what two crops of one image have in common, so everything else a scene holds is drawn
  from one distribution for every image: the object is pale (saturation ≤ 0.3) in any hue, the
  ground dark in any colour. Measured on two CPU cores (bench/RESULTS.md): with strong object
  colours, k-NN after 3 epochs was 25 % (init 13 %); with pale objects 47 % (init 21.5 %) — the
  object's colour against its ground survives hue jitter (it rotates both) and was learnt first.
  Earlier textured grounds (stripes of one orientation, checkers of one cell size, light or dark
  scenes) were each shared by the two views as well and were learnt instead of the shape.
  Shapes stand upright as objects do in photos, within ±20° (a star on its tip, a half-moon on
  its flat side): DINO's augmentations do not rotate, so a class spread over every rotation would
  ask it to learn rotation invariance from nothing. All shapes are solid: thin outlines cannot be
  matched by 8-px patches, so the ring is a thick one.
- **Cluttered backgrounds**: a smooth two-colour ground under 18–30 small distractors (dots,
  short bars, small squares) in random colours of middle brightness, drawn *under* the object, so
  the object is not the only structure in the image and its mask stays exact: the mask is the
  object's own pixels, rendered on a separate canvas. The object is brighter than any of them.
- Mild blur and pixel noise so edges are not perfectly aliased.

`make_scenes(out, n)` writes `out/<class>/<nnnnn>.png` and the masks as
`<out>-masks/<class>/<nnnnn>.png` (255 = object), so the image folder stays a plain labelled
folder that the indexer and the trainer read as it is.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hexagon",
    "heart",
    "halfmoon",
)
SIZE = 64  # default side in pixels
TILT = math.radians(20)  # how far a shape leans from upright, either way
# The angle at which each shape of _draw_object stands upright (image y points down).
UPRIGHT = {
    "square": math.pi / 4,
    "triangle": -math.pi / 2,
    "star": -math.pi / 2,
    "halfmoon": math.pi,
}


def masks_dir_for(images: str | Path) -> Path:
    """Where the masks of an image folder live: `<folder>-masks` beside it."""
    p = Path(images)
    return p.with_name(p.name + "-masks")


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, rot: float):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _regular(cx: float, cy: float, r: float, n: int, rot: float, inner: float = 1.0):
    """A regular n-gon, or an n-pointed star when inner < 1 (inner radius as a fraction)."""
    k = n * 2 if inner < 1 else n
    return [
        (
            cx
            + (r if inner >= 1 or i % 2 == 0 else r * inner) * math.cos(rot + 2 * math.pi * i / k),
            cy
            + (r if inner >= 1 or i % 2 == 0 else r * inner) * math.sin(rot + 2 * math.pi * i / k),
        )
        for i in range(k)
    ]


def _heart(cx: float, cy: float, r: float, rot: float):
    # The classic parametric heart, scaled so its bounding box is about 2r wide.
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((cx + x * r / 16, cy + (y + 2) * r / 16))
    return _rotate(pts, cx, cy, rot)


def _draw_object(
    d: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, rot: float, fill
):
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "square":
        d.polygon(_regular(cx, cy, r * 1.12, 4, rot), fill=fill)
    elif name == "triangle":
        d.polygon(_regular(cx, cy, r * 1.2, 3, rot), fill=fill)
    elif name == "diamond":  # a rhombus, twice as long as it is wide
        pts = [(cx, cy - r * 1.15), (cx + r * 0.58, cy), (cx, cy + r * 1.15), (cx - r * 0.58, cy)]
        d.polygon(_rotate(pts, cx, cy, rot), fill=fill)
    elif name == "cross":  # a plus with thick arms
        w = r * 0.36
        for a in (rot, rot + math.pi / 2):
            bar = [(cx - r, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx - r, cy + w)]
            d.polygon(_rotate(bar, cx, cy, a), fill=fill)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(3, round(r * 0.45)))
    elif name == "star":
        d.polygon(_regular(cx, cy, r * 1.2, 5, rot, inner=0.45), fill=fill)
    elif name == "hexagon":
        d.polygon(_regular(cx, cy, r, 6, rot), fill=fill)
    elif name == "heart":
        d.polygon(_heart(cx, cy, r, rot), fill=fill)
    elif name == "halfmoon":
        start = math.degrees(rot)
        d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=fill)
    else:
        raise ValueError(f"unknown class {name!r}")


def _colour(rng: np.random.Generator, value: float, sat=(0.35, 1.0)) -> tuple[int, int, int]:
    hue, s = rng.uniform(0, 1), rng.uniform(*sat)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, s, value))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A dark, smooth, two-colour ground under 18–30 small distractors, all of one distribution.

    Nothing here is shared by a whole image and not by every other: no stripes of one
    orientation, no checker of one cell size, no light or dark scene. Two crops of one scene
    then have nothing in common but the object, which is what DINO's views have to agree on.
    """
    c1 = np.asarray(_colour(rng, rng.uniform(0.15, 0.4), sat=(0.2, 0.8)), np.float64)
    c2 = np.clip(c1 + rng.normal(0, 25, 3), 0, 120)
    small = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8))
    t = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), np.float64)[..., None]
    t /= 255
    img = Image.fromarray(np.clip(c1 * t + c2 * (1 - t), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(18, 31)):
        x, y = rng.uniform(0, size, 2)
        s = rng.uniform(0.02, 0.05) * size
        col = _colour(rng, rng.uniform(0.3, 0.65))
        kind = rng.integers(3)
        if kind == 0:
            d.ellipse([x - s, y - s, x + s, y + s], fill=col)
        elif kind == 1:
            a, ln = rng.uniform(0, math.pi), rng.uniform(0.06, 0.16) * size
            end = (x + ln * math.cos(a), y + ln * math.sin(a))
            d.line([(x, y), end], fill=col, width=max(1, round(s / 2)))
        else:
            d.rectangle([x - s, y - s, x + s, y + s], fill=col)
    return img


def draw_scene(
    cls: int, rng: np.random.Generator, size: int = SIZE
) -> tuple[Image.Image, Image.Image]:
    """One image of class `cls` (index into CLASSES) and its object mask ("L", 255 = object)."""
    name = CLASSES[cls]
    img = _background(rng, size)
    r = rng.uniform(0.27, 0.40) * size
    margin = r * 0.9  # shapes may touch the border a little, as objects in photos do
    cx, cy = (rng.uniform(margin, size - margin) for _ in range(2))
    rot = UPRIGHT.get(name, 0.0) + rng.uniform(-TILT, TILT)
    # Bright on a dark ground, whatever its hue: the object stands out as a subject does.
    fill = _colour(rng, rng.uniform(0.85, 1.0), sat=(0.0, 0.3))
    _draw_object(ImageDraw.Draw(img), name, cx, cy, r, rot, fill)
    mask = Image.new("L", (size, size), 0)
    _draw_object(ImageDraw.Draw(mask), name, cx, cy, r, rot, 255)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(0.5)), np.float64)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), mask


def make_scenes(
    out_dir: str | Path,
    n_per_class: int,
    size: int = SIZE,
    seed: int = 0,
    masks_dir: str | Path | None = None,
) -> Path:
    """Write `out_dir/<class>/<nnnnn>.png` and their masks; returns out_dir.

    Args:
        out_dir: destination folder of the images (created).
        n_per_class: images per class.
        size: square image side in pixels.
        seed: the same seed gives the same images and masks.
        masks_dir: where the masks go (same layout); default `<out_dir>-masks`.
    """
    out = Path(out_dir)
    masks = Path(masks_dir) if masks_dir is not None else masks_dir_for(out)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        (masks / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, mask = draw_scene(c, rng, size)
            img.save(out / name / f"{i:05d}.png")
            mask.save(masks / name / f"{i:05d}.png")
    return out
