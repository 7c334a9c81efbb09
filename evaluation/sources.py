"""Labelled images for an evaluation: a folder of class folders or a tar/tar.gz of them.

Labels follow core.listing's one rule (the first folder under any wrapper folders), so a folder
that `dinoserve index --labels dirs` labels one way is scored with the same labels here.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.listing import is_image_name, label_of, wrapper_depth


class EvalError(ValueError):
    """Input an evaluation cannot score: an empty or unlabelled source, mismatched masks."""


@dataclass(frozen=True)
class Entry:
    """One image of a source: its path relative to the source, split into parts."""

    parts: tuple[str, ...]

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


def _folder_entries(root: Path) -> list[Entry]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and is_image_name(p.name)]
    return [Entry(p.relative_to(root).parts) for p in files]


def list_entries(source: Path) -> list[Entry]:
    """Every image of a folder or a tar archive, sorted by path.

    Raises:
        EvalError: the source is missing, not a folder or a tar, or holds no image.
    """
    if source.is_dir():
        entries = _folder_entries(source)
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile() and is_image_name(m.name))
        entries = [Entry(tuple(p for p in n.split("/") if p not in ("", "."))) for n in names]
    else:
        raise EvalError(f"{source}: not a folder or a tar archive of images")
    if not entries:
        raise EvalError(f"{source}: holds no image ({', '.join(('.jpg', '.png', '…'))})")
    return entries


def labels_of(entries: list[Entry], source: Path) -> list[str]:
    """Each entry's class (its first folder below the wrappers).

    Raises:
        EvalError: an image lies directly in the source, so it has no class.
    """
    depth = wrapper_depth([e.parts for e in entries])
    labels = [label_of(e.parts, depth) for e in entries]
    loose = [e.rel for e, lab in zip(entries, labels, strict=True) if lab is None]
    if loose:
        raise EvalError(
            f"{source}: {len(loose)} image(s) lie outside any class folder (e.g. {loose[0]}); "
            "a labelled source has one sub-folder per class"
        )
    return [lab for lab in labels if lab is not None]


def read_all(source: Path, entries: list[Entry]) -> Iterator[tuple[int, bytes]]:
    """(index into entries, bytes) for every entry; a tar archive is read in one pass, in its
    own order (not per member, which would re-read a compressed archive from the start).

    Raises:
        EvalError: an entry vanished while the source was read.
    """
    if source.is_dir():
        for i, e in enumerate(entries):
            yield i, (source / Path(*e.parts)).read_bytes()
        return
    wanted = {e.rel: i for i, e in enumerate(entries)}
    seen = 0
    with tarfile.open(source, mode="r:*") as tar:
        for m in tar:
            i = wanted.pop("/".join(p for p in m.name.split("/") if p not in ("", ".")), None)
            if i is None or not m.isfile():
                continue
            f = tar.extractfile(m)
            seen += 1
            yield i, f.read() if f is not None else b""
    if seen != len(entries):
        raise EvalError(f"{source}: changed while it was read ({next(iter(wanted))} is gone)")
