"""What to index: a directory tree, a CSV/JSONL manifest or a tar/tar.gz, as a sorted list of items.

Each item has a stable URI (the point id is derived from it), an optional label and extra payload,
and knows how to read its bytes. `--shard i/N` keeps the items whose id falls in shard i, so N
workers cover a source exactly once whatever order they list it in.
"""

from __future__ import annotations

import csv
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

from core.images import IMAGE_EXTENSIONS
from core.listing import is_image_name, label_of, wrapper_depth
from core.store import point_id
from core.uris import TAR_SCHEME
from indexer.ingest import RESERVED, Item


class SourceError(ValueError):
    """The source cannot be listed (missing, unreadable manifest, bad shard spec)."""


def _labelled(uris: list[str], parts: list[tuple[str, ...]], labels: str) -> list[Item]:
    """Items with labels by core.listing's rule (wrapper folders skipped), or none."""
    if labels != "dirs":
        return [Item(uri) for uri in uris]
    depth = wrapper_depth(parts)
    return [Item(uri, label_of(p, depth)) for uri, p in zip(uris, parts, strict=True)]


def list_directory(root: Path, labels: str) -> list[Item]:
    root = root.resolve()
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and is_image_name(p.name)]
    return _labelled([str(p) for p in files], [p.relative_to(root).parts for p in files], labels)


def list_tar(archive: Path, labels: str) -> list[Item]:
    archive = archive.resolve()
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile() and is_image_name(m.name))
    parts = [tuple(p for p in n.split("/") if p not in ("", ".")) for n in names]
    return _labelled([f"{TAR_SCHEME}{archive}#{n}" for n in names], parts, labels)


def list_manifest(manifest: Path) -> list[Item]:
    """CSV with a header (`path`, optional `label`, other columns → payload) or JSONL objects."""
    base = manifest.resolve().parent
    rows: list[dict[str, Any]]
    try:
        if manifest.suffix.lower() in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        else:
            with manifest.open(newline="") as f:
                rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as exc:
        raise SourceError(f"{manifest}: cannot read the manifest: {exc}") from exc
    items = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("path"):
            raise SourceError(f"{manifest}: row {n} has no 'path'")
        path = Path(str(row["path"]))
        uri = str(path if path.is_absolute() else (base / path).resolve())
        label = row.get("label")
        extra = {k: v for k, v in row.items() if k not in ("path", "label") and k not in RESERVED}
        items.append(Item(uri, str(label) if label not in (None, "") else None, extra))
    return sorted(items, key=lambda it: it.uri)


def list_source(
    source: str | Path, labels: str = "none", manifest: Path | None = None
) -> list[Item]:
    """All items of a source, sorted by URI.

    Args:
        source: a directory or a tar/tar.gz (ignored when `manifest` is given).
        labels: "dirs" to label by first-level sub-folder, "none" for no labels.
        manifest: a CSV/JSONL manifest of paths (relative to the manifest's folder).
    """
    if labels not in ("dirs", "none"):
        raise SourceError("labels must be 'dirs' or 'none'")
    if not str(source) and manifest is None:  # never "." by accident: it may hold anything
        raise SourceError("nothing to index: name a folder or tar/tar.gz, or pass --manifest")
    if manifest is not None:
        return list_manifest(Path(manifest))
    path = Path(source)
    if path.is_dir():
        return list_directory(path, labels)
    if path.is_file() and tarfile.is_tarfile(path):
        return list_tar(path, labels)
    raise SourceError(f"{source}: not a directory, a tar archive or a manifest")


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/N' → (i, N) with 0 ≤ i < N; None → (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError as exc:
        raise SourceError(f"--shard must look like i/N, got {spec!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise SourceError(f"--shard {spec}: need 0 ≤ i < N")
    return i, n


def in_shard(uri: str, shard: tuple[int, int]) -> bool:
    """Whether the point of `uri` (id: core.store.point_id) belongs to shard i of N."""
    i, n = shard
    return n == 1 or uuid.UUID(point_id(uri)).int % n == i


def check_items(items: list[Item], source: str | Path, labels: str, prune: bool = False) -> None:
    """Refuse a listing that would index nothing, or nothing labelled when labels were asked.

    Args:
        prune: an empty source is fine when its points are to be pruned (all files gone).
    Raises:
        SourceError: no images (unless `prune`), or `labels="dirs"` with no sub-folders.
    """
    if not items:
        if prune:
            return
        raise SourceError(
            f"{source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "nothing was indexed"
        )
    if labels == "dirs" and all(it.label is None for it in items):
        raise SourceError(
            f"{source}: --labels dirs labels each image by its first-level sub-folder, but the "
            f"{len(items)} images lie directly in it; put them in one folder per class, or "
            "index without --labels dirs (or with a manifest's label column)"
        )
