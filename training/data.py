"""Training data: image folders or tar archives, decoded by CPU workers, in a resumable order.

Workers only decode: at full resolution (the long side bounded by `max_side`), or, on the legacy
squashed path (`load_size` > 0), resized to one square with the aspect ratio kept aside. A batch
is one canvas of the largest image's size with each image's size beside it; every augmentation
happens later, batched, on the training device (see augment.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from core.images import to_rgb
from core.listing import is_image_name, label_of, wrapper_depth

log = logging.getLogger(__name__)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def unpack_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack a tar/tar.gz once into the cache (atomically) and return the folder.

    Compressed archives cannot be read at random offsets, so they are unpacked; the cache key is
    the archive's path, size and mtime, so a changed archive is unpacked again.
    """
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir / f"{archive.name.split('.')[0]}-{key[:12]}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".unpack-"))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and is_image_name(m.name)]
            tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp, target)
    except FileExistsError:  # another process won the race; its copy is complete
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_source(source: str | Path, cache_dir: str | Path) -> Path:
    """A folder as is; a tar/tar.gz/tgz unpacked into the cache."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file() and tarfile.is_tarfile(path):
        return unpack_archive(path, Path(cache_dir))
    raise FileNotFoundError(f"{source}: not a folder of images or a tar archive")


@dataclass(frozen=True)
class ImageList:
    """Files of a source and, when it has class sub-folders, their labels."""

    root: Path
    files: list[Path]
    labels: list[int]
    classes: list[str]


def list_images(root: Path) -> ImageList:
    """All images under `root`, sorted; the class is the first folder below any wrapper folder
    (e.g. train/ inside an archive), as the indexer labels them (core/listing.py)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
    if not files:
        raise FileNotFoundError(f"{root}: no images found")
    parts = [p.relative_to(root).parts for p in files]
    depth = wrapper_depth(parts)
    names = [label_of(p, depth) for p in parts]
    classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[n] if n is not None else -1 for n in names]
    return ImageList(root.joinpath(*parts[0][:depth]), files, labels, classes)


def bounded_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) shrunk so the long side is at most max_side (0 = no bound)."""
    long = max(width, height)
    if not max_side or long <= max_side:
        return width, height
    scale = max_side / long
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_full(data: bytes | Path, max_side: int) -> np.ndarray:
    """Decode an image at its own size, the long side shrunk to max_side (antialiased) if larger.

    Returns (3, H, W) uint8, EXIF orientation applied.
    """
    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
        if max_side:
            img.draft("RGB", (max_side, max_side))  # JPEG: DCT-scale huge images, still ≥ max_side
        rgb = to_rgb(img)
    size = bounded_size(rgb.width, rgb.height, max_side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_square(data: bytes | Path, load_size: int) -> tuple[np.ndarray, float]:
    """Decode an image and resize it to load_size² (antialiased bicubic), with its aspect ratio."""
    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
        img.draft("RGB", (load_size, load_size))  # JPEG: decode at a reduced scale when possible
        rgb = to_rgb(img)
    aspect = rgb.width / rgb.height
    if rgb.size != (load_size, load_size):
        rgb = rgb.resize((load_size, load_size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy(), aspect


def decode(data: bytes | Path, load_size: int, max_side: int) -> tuple[np.ndarray, float]:
    """(3, H, W) uint8 and the original aspect ratio: squashed to load_size² when load_size > 0,
    else at full resolution (long side ≤ max_side)."""
    if load_size:
        return decode_square(data, load_size)
    arr = decode_full(data, max_side)
    return arr, arr.shape[2] / arr.shape[1]


class TrainImages(Dataset):
    """Decoded training images: (uint8 (3, H, W), aspect, ok). Unreadable files give ok=False.

    Args:
        load_size: > 0 squashes every image to load_size² (legacy path); 0 keeps full resolution.
        max_side: bound on the long side at full resolution (0 = none).
    """

    def __init__(self, images: ImageList, load_size: int, max_side: int = 0) -> None:
        self.images = images
        self.load_size, self.max_side = load_size, max_side

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float, bool]:
        try:
            arr, aspect = decode(self.images.files[i], self.load_size, self.max_side)
            return torch.from_numpy(arr), aspect, True
        except _DECODE_ERRORS as exc:
            log.debug("skipping %s: %s", self.images.files[i], exc)
            s = self.load_size or 1
            return torch.zeros(3, s, s, dtype=torch.uint8), 1.0, False


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) uint8 canvas; image i fills [:, :h_i, :w_i]
    aspect: torch.Tensor  # (B,) original width / height
    sizes: torch.Tensor  # (B, 2) int (h_i, w_i)
    failed: int  # unreadable images replaced in this batch


def pad_stack(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, h, w) images → one (B, 3, H, W) canvas and the (B, 2) sizes (h, w).

    The margin repeats each image's last row and column, so resampling near an edge sees the
    edge (as border clamping would), never the margin's fill.
    """
    sizes = torch.tensor([im.shape[1:] for im in images], dtype=torch.long)
    hh, ww = (int(v) for v in sizes.max(0).values)
    if all(im.shape[1:] == (hh, ww) for im in images):
        return torch.stack(images), sizes
    out = images[0].new_empty(len(images), 3, hh, ww)
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        out[i, :, :h, :w] = im
        out[i, :, :h, w:] = im[:, :, w - 1 : w]
        out[i, :, h:, :] = out[i, :, h - 1 : h, :]
    return out, sizes


class UnreadableBatch(RuntimeError):
    """Every image of a batch failed to decode."""


def collate(items: list[tuple[torch.Tensor, float, bool]]) -> Batch:
    """Stack a batch; unreadable images are replaced by readable ones of the same batch.

    Replacing rather than dropping keeps every process's batch the same size (DDP stays in step).
    """
    good = [i for i, (_, _, ok) in enumerate(items) if ok]
    if not good:
        raise UnreadableBatch("a whole batch of images could not be decoded; is the data readable?")
    pick = [i if items[i][2] else good[n % len(good)] for n, i in enumerate(range(len(items)))]
    images, sizes = pad_stack([items[i][0] for i in pick])
    return Batch(
        images=images,
        aspect=torch.tensor([items[i][1] for i in pick], dtype=torch.float32),
        sizes=sizes,
        failed=len(items) - len(good),
    )


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, split across processes, that can start mid-epoch.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = n // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{n} images cannot fill one batch of {batch_size} on {world_size} process(es)"
            )
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        mine = perm[self.rank : self.per_rank * self.world_size : self.world_size]
        mine = mine[: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def subset(images: ImageList, indices: np.ndarray | list[int]) -> ImageList:
    return ImageList(
        images.root,
        [images.files[i] for i in indices],
        [images.labels[i] for i in indices],
        images.classes,
    )


def split_holdout(images: ImageList, per_class: int) -> tuple[ImageList, ImageList]:
    """(rest, held out): the last `per_class` images (in sorted order) of each class held out."""
    if not images.classes:
        raise ValueError(f"{images.root}: holding out per class needs class sub-folders")
    labels = np.asarray(images.labels)
    held = np.concatenate(
        [np.flatnonzero(labels == c)[-per_class:] for c in range(len(images.classes))]
    )
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return subset(images, np.flatnonzero(~mask)), subset(images, np.flatnonzero(mask))
