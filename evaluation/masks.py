"""Jaccard of the served attention masks against true object masks, as the DINO paper reports it.

Each image goes through the engine the service runs; its last-layer CLS attention becomes, per
head, the mask `POST /attention` serves (core.attention: the cells holding `threshold` of the
head's mass, upsampled to pixels; a cell is a patch, or `views.shift` pixels where the package's
views stitch a finer map, core.package.EmbedViews). The true mask is brought to the model's view
with the same resize and centre crop as the image, then compared pixel by pixel:
J = |A ∩ B| / |A ∪ B|. Reported per head (mean over images), for the best head and as the mean
over heads.

Three figures make those readable, since a Jaccard at a mass threshold mixes where a head looks
with how its mass is spread:
- `object_mass`, per head: the share of the head's attention that lands on the object (each
  patch weighted by the share of its pixels that are object), against `chance`, the object's
  share of the image, which is what a head spread evenly over the image puts there. It needs no
  threshold; a random ViT's near-uniform maps score chance here even where the few ties its
  threshold breaks happen to favour the object.
- `ceiling`: the Jaccard of the best mask any head could serve on this grid (the cells ranked
  by how much object they hold, the best prefix), the limit the grid itself sets.
- `even_head`: the Jaccard of a head spread evenly over the object's pixels. At threshold t it
  keeps only about t of the object, so it scores about t: a mask above that needs a head with
  part of its mass spread thinly outside the object and the rest evenly on it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.attention import attention_mask, upsample
from core.engines import Engine
from core.images import IMAGE_EXTENSIONS, resize_center_crop
from core.vit import smooth_maps
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
    object_mass: list[float] = field(default_factory=list)  # per head, share on the object
    chance: float = 0.0  # the object's share of the image: a uniform head's object_mass
    ceiling: float = 0.0  # the Jaccard of the best mask on the map's grid
    even_head: float = 0.0  # a head spread evenly over the object, at this threshold
    grid: tuple[int, int] = (0, 0)  # the attention map's cells (finer than patches if stitched)
    cell: int = 0  # input pixels per cell side
    smooth: float = 0.0  # σ (cells) of the map's smoothing: the package's, or the one asked
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        heads = ", ".join(f"{j:.3f}" for j in self.per_head)
        return (
            f"attention-mask Jaccard of {self.model_version} at threshold {self.threshold}: "
            f"mean over heads {self.mean:.3f}, best head {self.best_head} {self.best:.3f} "
            f"(per head: {heads}; {self.images} images); attention on the object per head "
            f"{', '.join(f'{m:.3f}' for m in self.object_mass)} against chance {self.chance:.3f}; "
            f"limits on this grid ({self.grid[0]} × {self.grid[1]} cells of {self.cell} px"
            + (f", the map smoothed by σ {self.smooth:g} cells" if self.smooth else "")
            + "): "
            f"best cell mask {self.ceiling:.3f}, a head even over the "
            f"object {self.even_head:.3f}"
        )


def jaccard(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """J of (..., H, W) bool predictions against one (H, W) bool truth; 1 where both are empty."""
    inter = (pred & truth).sum(axis=(-2, -1))
    union = (pred | truth).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def object_share(truth: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    """(h, w) share of each patch's pixels that are object (truth cropped to the grid)."""
    h, w = grid
    t = np.zeros((h * patch, w * patch), np.float64)
    th, tw = min(truth.shape[0], h * patch), min(truth.shape[1], w * patch)
    t[:th, :tw] = truth[:th, :tw]
    return t.reshape(h, patch, w, patch).mean(axis=(1, 3))


def best_patch_jaccard(share: np.ndarray, patch: int) -> float:
    """The highest Jaccard a mask made of whole patches reaches against the truth of `share`.

    The best mask is the k patches holding most object for some k: adding a patch in order of
    share changes J monotonically up to the optimum, so trying every prefix is exact.
    """
    area = patch * patch
    total = share.sum() * area
    if total == 0:
        return 1.0  # no object: the empty mask is exact
    ranked = np.sort(share.ravel())[::-1]
    inter = np.cumsum(ranked) * area
    union = total + area * np.arange(1, len(ranked) + 1) - inter
    return float((inter / union).max())


def limits(truth: np.ndarray, grid: tuple[int, int], patch: int, threshold: float) -> np.ndarray:
    """(chance, ceiling, even head) for one true mask: see the module docstring."""
    share = object_share(truth, grid, patch)
    even = upsample(attention_mask(share[None], threshold), patch)[0]
    th, tw = min(even.shape[0], truth.shape[0]), min(even.shape[1], truth.shape[1])
    return np.array(
        [
            share.mean(),
            best_patch_jaccard(share, patch),
            float(jaccard(even[:th, :tw], truth[:th, :tw])),
        ]
    )


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
    smooth: float | None = None,
) -> MaskResult:
    """Score the attention masks of every image of `images` against its mask in `masks`.

    Args:
        engine: a loaded package (core.engine_choice.load_engine).
        images: folder of images (any layout; class folders are fine).
        masks: folder with one mask per image, same relative path (non-zero = object).
        threshold: fraction of each head's attention mass a mask keeps (the service's default).
        batch: images per engine call.
        progress: show a progress bar (stderr).
        smooth: score the map as a package exported with `views.smooth` = this σ would serve
            it (core.vit.smooth_maps on the engine's map), to choose σ without an export per
            value. Only for a package whose map is not smoothed already.
    Raises:
        EvalError: an empty folder, a missing or mis-sized mask, a threshold outside (0, 1],
            a `smooth` outside [0, 4] or for a package that smooths its map itself.
    """
    if not 0 < threshold <= 1:
        raise EvalError(f"threshold must be in (0, 1], got {threshold}")
    if smooth is not None and not 0 <= smooth <= 4:
        raise EvalError(f"smooth must be in [0, 4] cells, got {smooth}")
    if smooth is not None and engine.meta.views.smooth:
        raise EvalError(
            f"the package already smooths its map (σ {engine.meta.views.smooth} cells); "
            "--smooth is for a package exported without it"
        )
    t0 = time.perf_counter()
    if not images.is_dir():
        raise EvalError(f"{images}: not a folder of images")
    entries = list_entries(images)
    paths = mask_paths(images, entries, masks)
    meta = engine.meta
    cell = meta.map_cell  # the patch, or finer where the package's views stitch the map
    skipped: list[str] = []

    def score(idx: list[int], imgs: list[Image.Image]) -> np.ndarray:
        batch_in = np.stack([engine.preprocess(im) for im in imgs])
        att = engine.attention(batch_in).astype(np.float64)  # (B, heads, h, w)
        if smooth:
            att = smooth_maps(torch.from_numpy(att), smooth).numpy()
        grid = att.shape[-2:]
        pred = upsample(attention_mask(att, threshold), cell)  # (B, heads, H, W)
        out = []
        for i, a, p, im in zip(idx, att, pred, imgs, strict=True):
            truth = true_mask(paths[i], im.size, meta.img_size, meta.crop_pct)
            h, w = min(p.shape[-2], truth.shape[0]), min(p.shape[-1], truth.shape[1])
            share = object_share(truth, grid, cell)
            total = a.sum(axis=(-2, -1))
            mass = (a * share).sum(axis=(-2, -1)) / np.where(total > 0, total, 1.0)
            row = [jaccard(p[:, :h, :w], truth[:h, :w]), mass]
            out.append(np.concatenate([*row, limits(truth, grid, cell, threshold)]))
        # (B, 2 · heads + 3): Jaccard per head, object mass per head, chance, ceiling, even head
        return np.stack(out)

    per_image, _ = run_batches(
        batches(images, entries, batch, f"masks {images.name}", progress, skipped),
        len(entries),
        score,
    )
    if not len(per_image):
        raise EvalError(f"no image of {images} could be decoded")
    means = per_image.mean(axis=0)
    heads = (len(means) - 3) // 2
    per_head, mass = means[:heads], means[heads : 2 * heads]
    chance, ceiling, even = means[2 * heads :]
    best = int(per_head.argmax())
    return MaskResult(
        model_version=engine.model_version,
        threshold=threshold,
        images=len(per_image),
        per_head=[round(float(j), 4) for j in per_head],
        best_head=best,
        best=round(float(per_head[best]), 4),
        mean=round(float(per_head.mean()), 4),
        object_mass=[round(float(m), 4) for m in mass],
        chance=round(float(chance), 4),
        ceiling=round(float(ceiling), 4),
        even_head=round(float(even), 4),
        grid=meta.grid,
        cell=cell,
        smooth=meta.views.smooth if smooth is None else smooth,
        skipped=skipped,
        seconds=round(time.perf_counter() - t0, 2),
    )
