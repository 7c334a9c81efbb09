"""Read, decode and push a labelled source through an engine in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.engines import Engine
from core.images import ImageRejected, decode_image
from evaluation.sources import Entry, read_all

MAX_PIXELS = 40_000_000


def batches(
    source: Path,
    entries: list[Entry],
    batch: int,
    desc: str,
    progress: bool = True,
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[int], list[Image.Image]]]:
    """(indices, decoded images) in batches of `batch`; undecodable images are left out and
    their paths appended to `skipped`."""
    idx: list[int] = []
    imgs: list[Image.Image] = []
    with tqdm(total=len(entries), desc=desc, unit="img", disable=not progress) as bar:
        for i, data in read_all(source, entries):
            bar.update(1)
            try:
                imgs.append(decode_image(data, MAX_PIXELS))
            except ImageRejected:
                if skipped is not None:
                    skipped.append(entries[i].rel)
                continue
            idx.append(i)
            if len(imgs) == batch:
                yield idx, imgs
                idx, imgs = [], []
    if imgs:
        yield idx, imgs


def run_batches(
    parts: Iterable[tuple[list[int], list[Image.Image]]],
    n: int,
    fn: Callable[[list[int], list[Image.Image]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Apply `fn` to each batch; returns (stacked outputs in entry order, which entries)."""
    out: np.ndarray | None = None
    have = np.zeros(n, bool)
    for idx, imgs in parts:
        res = fn(idx, imgs)
        if out is None:
            out = np.zeros((n, *res.shape[1:]), res.dtype)
        out[idx] = res
        have[idx] = True
    if out is None:
        out = np.zeros((n, 0), np.float32)
    return out[have], np.flatnonzero(have)


def embed_entries(
    engine: Engine,
    source: Path,
    entries: list[Entry],
    batch: int = 64,
    progress: bool = True,
    skipped: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised embeddings of the decodable entries and their indices into `entries`."""
    return run_batches(
        batches(source, entries, batch, f"embed {source.name}", progress, skipped),
        len(entries),
        lambda _idx, imgs: engine.embed_images(imgs),
    )
