"""Real images of a source (a folder or a tar of images, class folders optional) through a
package's preprocessing: the calibration images of a static int8 export and the held-out images
of the accuracy guard (evaluation/variant_guard.py), drawn disjoint from one seeded sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.images import ImageRejected, decode_image, preprocess
from evaluation.sources import EvalError, labels_of, list_entries, read_all

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Preprocessing:
    """What a package's preprocessing needs (model.json's fields)."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


@dataclass(frozen=True)
class RealImages:
    """Preprocessed images (N, 3, S, S) float32 and their labels (None: the source has none)."""

    images: np.ndarray
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.images)


def load_real_images(
    source: Path, prep: Preprocessing, counts: list[int], seed: int = 0
) -> list[RealImages]:
    """Disjoint seeded samples of `source`, one per count (fewer when the source is smaller:
    each sample gets its share of what there is), decoded and preprocessed.

    Args:
        source: a folder or tar/tar.gz of images; class folders give labels.
        prep: the package's preprocessing.
        counts: images wanted per sample, e.g. [256, 512] for calibration and guard.
        seed: which images are drawn.
    Raises:
        EvalError: the source is missing, holds no image, or no sampled image decodes.
    """
    entries = list_entries(Path(source))
    try:
        labels: list[str] | None = labels_of(entries, Path(source))
    except EvalError:  # images outside class folders: an unlabelled source
        labels = None
    order = np.random.default_rng(seed).permutation(len(entries))
    scale = min(1.0, len(entries) / max(sum(counts), 1))
    sizes = [max(1, int(c * scale)) for c in counts]
    picks, start = [], 0
    for n in sizes:
        picks.append(sorted(order[start : start + n].tolist()))
        start += n
    wanted = sorted({i for p in picks for i in p})
    arrays: dict[int, np.ndarray] = {}
    chosen = [entries[i] for i in wanted]
    for j, data in read_all(Path(source), chosen):
        try:
            img = decode_image(data, MAX_PIXELS)
        except ImageRejected:
            continue
        arrays[wanted[j]] = preprocess(img, prep.img_size, prep.mean, prep.std, prep.crop_pct)
    if not arrays:
        raise EvalError(f"{source}: none of the {len(wanted)} sampled images could be decoded")
    out = []
    for p in picks:
        kept = [i for i in p if i in arrays]
        imgs = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, 3, 1, 1), np.float32)
        out.append(RealImages(imgs, [labels[i] for i in kept] if labels is not None else None))
    return out
