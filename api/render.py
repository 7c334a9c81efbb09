"""The attention picture of `POST /attention?format=png`, composed with numpy and PIL only.

Two rows of square tiles: on top the image the model saw (resized and centre-cropped) and one
heat-map per head over it; below, the image kept by the union of the heads' masks and by each
head's mask (what holds `threshold` of its attention), the rest dimmed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchors of the "inferno" colormap (dark → bright), interpolated to a 256-entry table.
_ANCHORS = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    np.float64,
)
_AT = np.linspace(0, 1, len(_ANCHORS))  # where each anchor sits on [0, 1]
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), _AT, _ANCHORS[:, c]) for c in range(3)], axis=-1
).astype(np.uint8)
GAP = 4


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape → uint8 RGB, shape (..., 3)."""
    idx = np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)
    return _LUT[idx]


def _heat(att: np.ndarray, tile: int) -> np.ndarray:
    """One head's (h, w) attention, scaled to its maximum, bilinear to (tile, tile) RGB."""
    peak = float(att.max())
    norm = (att / peak if peak > 0 else att).astype(np.float32)
    big = Image.fromarray(norm, mode="F").resize((tile, tile), Image.Resampling.BILINEAR)
    return colormap(np.asarray(big)).astype(np.float32)


def _mask(mask: np.ndarray, tile: int) -> np.ndarray:
    """A (h, w) bool mask → (tile, tile, 1) float, nearest (each patch a block, as in DINO)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (tile, tile), Image.Resampling.NEAREST
    )
    return (np.asarray(img, np.float32) / 255.0)[..., None]


def render_attention(
    image: Image.Image, attention: np.ndarray, masks: np.ndarray, tile: int = 224
) -> bytes:
    """A PNG of the image, per-head heat-maps and masks.

    Args:
        image: the RGB image as the model saw it (resized and centre-cropped, square).
        attention: (heads, h, w) CLS attention of the last block.
        masks: (heads, h, w) bool, the patches holding `threshold` of each head's mass.
        tile: side of each square tile in pixels.
    """
    heads = attention.shape[0]
    square = image.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC)
    base = np.asarray(square, np.float32)
    cols = heads + 1
    canvas = np.full((2 * tile + GAP, cols * tile + (cols - 1) * GAP, 3), 255, np.float32)

    def put(row: int, col: int, pixels: np.ndarray) -> None:
        y, x = row * (tile + GAP), col * (tile + GAP)
        canvas[y : y + tile, x : x + tile] = pixels

    def keep(m: np.ndarray) -> np.ndarray:
        return base * (0.15 + 0.85 * m)  # masked-out pixels dimmed, not black: context stays

    put(0, 0, base)
    put(1, 0, keep(_mask(masks.any(axis=0), tile)))
    for h in range(heads):
        put(0, h + 1, 0.35 * base + 0.65 * _heat(attention[h], tile))
        put(1, h + 1, keep(_mask(masks[h], tile)))
    out = io.BytesIO()
    # compress_level=1: a few times faster than the default for a slightly larger file.
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(out, "PNG", compress_level=1)
    return out.getvalue()
