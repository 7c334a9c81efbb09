"""Jaccard of the served attention masks against true object masks, as the DINO paper reports it.

Each image goes through the engine the service runs; its last-layer CLS attention becomes, per
head, the mask `POST /attention` serves (core.attention: the patches holding `threshold` of the
head's mass, upsampled by the patch size). The true mask is brought to the model's view with the
same resize and centre crop as the image, then compared pixel by pixel: J = |A ∩ B| / |A ∪ B|.
Reported per head (mean over images), for the best head and as the mean over heads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from core.attention import attention_mask, upsample
from core.engines import Engine
from core.images import IMAGE_EXTENSIONS, resize_center_crop
from evaluation.embed import batches, run_batches
from evaluation.sources import Entry, EvalError, list_entries


@dataclass(frozen=True)
class MaskResult:
    model_version: str
    threshold: float
    images: int
    per_head: list[float]  # mean Jaccard of each head over the images
    best_head: int
    best: float  # per_head[best_head]
    mean: float  # mean over heads
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        heads = ", ".join(f"{j:.3f}" for j in self.per_head)
        return (
            f"attention-mask Jaccard of {self.model_version} at threshold {self.threshold}: "
            f"mean over heads {self.mean:.3f}, best head {self.best_head} {self.best:.3f} "
            f"(per head: {heads}; {self.images} images)"
        )


def jaccard(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """J of (..., H, W) bool predictions against one (H, W) bool truth; 1 where both are empty."""
    inter = (pred & truth).sum(axis=(-2, -1))
    union = (pred | truth).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_paths(images: Path, entries: list[Entry], masks: Path) -> list[Path]:
    """The mask of each image: the same relative path under `masks`, any image extension.

    Raises:
        EvalError: the masks folder is missing, or some image has no mask (first few named).
    """
    if not masks.is_dir():
        raise EvalError(f"{masks}: not a folder of masks")
    by_stem: dict[str, Path] = {}
    for p in masks.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            by_stem[str(p.relative_to(masks).with_suffix(""))] = p
    found, missing = [], []
    for e in entries:
        p = by_stem.get(str(Path(*e.parts).with_suffix("")))
        (found if p is not None else missing).append(p if p is not None else e.rel)
    if missing:
        raise EvalError(
            f"{len(missing)} of {len(entries)} images in {images} have no mask of the same "
            f"name in {masks} (first: {', '.join(map(str, missing[:3]))})"
        )
    return found


def true_mask(path: Path, size: tuple[int, int], img_size: int, crop_pct: float) -> np.ndarray:
    """A mask file (non-zero = object) as the model sees its image: (img_size, img_size) bool.

    Raises:
        EvalError: unreadable, or not the size of its image.
    """
    try:
        with Image.open(path) as m:
            mask = m.convert("L")
    except OSError as exc:
        raise EvalError(f"{path}: not a readable mask image ({exc})") from exc
    if mask.size != size:
        raise EvalError(
            f"{path}: the mask is {mask.size[0]}×{mask.size[1]} but its image is "
            f"{size[0]}×{size[1]}; a mask must have its image's size"
        )
    binary = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    seen = resize_center_crop(binary.convert("RGB"), img_size, crop_pct).convert("L")
    return np.asarray(seen) >= 128


def evaluate_masks(
    engine: Engine,
    images: Path,
    masks: Path,
    threshold: float = 0.6,
    batch: int = 64,
    progress: bool = True,
) -> MaskResult:
    """Score the attention masks of every image of `images` against its mask in `masks`.

    Args:
        engine: a loaded package (core.engine_choice.load_engine).
        images: folder of images (any layout; class folders are fine).
        masks: folder with one mask per image, same relative path (non-zero = object).
        threshold: fraction of each head's attention mass a mask keeps (the service's default).
        batch: images per engine call.
        progress: show a progress bar (stderr).
    Raises:
        EvalError: an empty folder, a missing or mis-sized mask, a threshold outside (0, 1].
    """
    if not 0 < threshold <= 1:
        raise EvalError(f"threshold must be in (0, 1], got {threshold}")
    t0 = time.perf_counter()
    if not images.is_dir():
        raise EvalError(f"{images}: not a folder of images")
    entries = list_entries(images)
    paths = mask_paths(images, entries, masks)
    meta = engine.meta
    skipped: list[str] = []

    def score(idx: list[int], imgs: list[Image.Image]) -> np.ndarray:
        batch_in = np.stack([engine.preprocess(im) for im in imgs])
        att = engine.attention(batch_in)  # (B, heads, h, w)
        pred = upsample(attention_mask(att, threshold), meta.patch_size)  # (B, heads, H, W)
        out = []
        for i, p, im in zip(idx, pred, imgs, strict=True):
            truth = true_mask(paths[i], im.size, meta.img_size, meta.crop_pct)
            h, w = min(p.shape[-2], truth.shape[0]), min(p.shape[-1], truth.shape[1])
            out.append(jaccard(p[:, :h, :w], truth[:h, :w]))
        return np.stack(out)  # (B, heads)

    per_image, _ = run_batches(
        batches(images, entries, batch, f"masks {images.name}", progress, skipped),
        len(entries),
        score,
    )
    if not len(per_image):
        raise EvalError(f"no image of {images} could be decoded")
    per_head = per_image.mean(axis=0)
    best = int(per_head.argmax())
    return MaskResult(
        model_version=engine.model_version,
        threshold=threshold,
        images=len(per_image),
        per_head=[round(float(j), 4) for j in per_head],
        best_head=best,
        best=round(float(per_head[best]), 4),
        mean=round(float(per_head.mean()), 4),
        skipped=skipped,
        seconds=round(time.perf_counter() - t0, 2),
    )
