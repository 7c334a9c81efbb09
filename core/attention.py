"""Attention masks as in DINO's `visualize_attention.py`: per head, keep the smallest set of patches
that holds `threshold` of the head's mass, and upsample maps and masks by the patch size."""

from __future__ import annotations

import numpy as np


def attention_mask(attention: np.ndarray, threshold: float = 0.6) -> np.ndarray:
    """Boolean masks of the patches that together hold `threshold` of each head's attention.

    Sort ascending, normalise, cumulative sum, keep where cumsum > 1 − threshold: what is dropped
    is the longest run of smallest values holding at most 1 − threshold of the mass.

    Args:
        attention: (..., heads, h, w) non-negative attention per head.
        threshold: fraction of the mass to keep, in (0, 1].
    Returns:
        bool array of the same shape.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    *lead, h, w = attention.shape
    flat = attention.reshape(*lead, h * w).astype(np.float64)
    order = np.argsort(flat, axis=-1)  # ascending
    ranked = np.take_along_axis(flat, order, axis=-1)
    total = ranked.sum(axis=-1, keepdims=True)
    cum = np.cumsum(ranked / np.where(total > 0, total, 1.0), axis=-1)
    keep_sorted = cum > 1 - threshold
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep.reshape(attention.shape)


def upsample(maps: np.ndarray, patch_size: int) -> np.ndarray:
    """Nearest upsampling of (..., h, w) patch maps to pixels, (..., h·p, w·p).

    Args:
        maps: attention maps or masks on the patch grid.
        patch_size: pixels per patch side.
    """
    return maps.repeat(patch_size, axis=-2).repeat(patch_size, axis=-1)


def kept_mass(attention: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fraction of each head's attention inside its mask, (..., heads)."""
    total = attention.sum(axis=(-2, -1))
    return (attention * mask).sum(axis=(-2, -1)) / np.where(total > 0, total, 1.0)
