"""The one listing rule for image sources: which files are images and which folder is a label.

Training (training/data.py), indexing (indexer/sources.py) and so a refresh of what was indexed
share it, for folders and tar archives alike:

- an image is a file with an image extension (core.images.IMAGE_EXTENSIONS) whose name does
  not start with a dot;
- its label (`--labels dirs`, the trainer's classes) is the first folder under the source;
- *wrapper* folders are skipped first: while every image lies under one and the same
  top-level folder and some image lies deeper than directly in it, that folder wraps the
  classes (`root/train/<class>/x.jpg`, an archive of `train/`) and is not a label itself.

Manifests name their labels in a column and need no rule.
"""

from __future__ import annotations

from core.images import IMAGE_EXTENSIONS


def is_image_name(name: str) -> bool:
    """An image file name (or archive member path) that is not hidden."""
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def wrapper_depth(all_parts: list[tuple[str, ...]]) -> int:
    """How many leading folders wrap the class folders.

    Args:
        all_parts: each image's path relative to the source, split into parts (folders, file).
    """
    depth = 0
    while all_parts and all(len(p) > depth + 1 for p in all_parts):
        if len({p[depth] for p in all_parts}) != 1:
            break  # several top-level folders: those are the classes
        if not any(len(p) > depth + 2 for p in all_parts):
            break  # the one folder holds the images directly: it is the (only) class
        depth += 1
    return depth


def label_of(parts: tuple[str, ...], depth: int) -> str | None:
    """The first folder below the wrappers, or None for an image directly in the source."""
    rel = parts[depth:]
    return rel[0] if len(rel) > 1 else None
