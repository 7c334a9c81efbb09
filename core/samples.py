"""Example images the web page offers for a first try (DINOSERVE_SAMPLES_DIR), with true masks.

The demo points it at its held-out scenes (`var/data/synthetic-queries`); their object masks lie
beside them in `<folder>-masks` (training/scenes.py's layout), and the page shows a mask beside
the attention the model found. A client names a sample by its listed name, never by a path, so
nothing outside the folder can be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from core.listing import is_image_name

MAX_SAMPLES = 200  # a page row, not a gallery: the first ones (round-robin over classes)


class UnknownSample(LookupError):
    """No sample of that name (or no mask for it, or no samples folder configured)."""


@dataclass(frozen=True)
class Sample:
    name: str  # path relative to the folder, with "/" (e.g. "star/00000.png")
    label: str | None  # its class folder
    image: Path
    mask: Path | None


def masks_dir_for(folder: Path) -> Path:
    """`<folder>-masks` beside the folder (where training/scenes.py writes the masks)."""
    return folder.with_name(folder.name + "-masks")


def list_samples(folder: Path, limit: int = MAX_SAMPLES) -> list[Sample]:
    """The images of `folder` (class folders or flat), one of each class in turn, with masks.

    Args:
        folder: the samples folder; a missing folder has no samples.
        limit: at most this many.
    """
    if not folder.is_dir():
        return []
    masks = masks_dir_for(folder)
    mask_of = {}
    if masks.is_dir():
        for p in masks.rglob("*"):
            if p.is_file() and is_image_name(p.name):
                mask_of[p.relative_to(masks).with_suffix("").as_posix()] = p
    by_class: dict[str | None, list[Sample]] = {}
    for p in sorted(folder.rglob("*")):
        if not (p.is_file() and is_image_name(p.name)):
            continue
        rel = p.relative_to(folder)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        sample = Sample(rel.as_posix(), label, p, mask_of.get(rel.with_suffix("").as_posix()))
        by_class.setdefault(label, []).append(sample)
    turns = zip_longest(*by_class.values())
    return [s for turn in turns for s in turn if s is not None][:limit]


class Samples:
    """The configured samples, listed once.

    Args:
        folder: DINOSERVE_SAMPLES_DIR, or None for none.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.items = list_samples(folder) if folder is not None else []
        self._by_name = {s.name: s for s in self.items}

    def file(self, name: str, mask: bool = False) -> Path:
        """The image (or mask) file of a listed sample.

        Raises:
            UnknownSample: not a listed name, or it has no mask.
        """
        sample = self._by_name.get(name)
        if sample is None:
            raise UnknownSample(f"no sample named {name!r} (GET /samples lists them)")
        if mask:
            if sample.mask is None:
                raise UnknownSample(f"sample {name!r} has no mask")
            return sample.mask
        return sample.image
