"""The demo's real photos: a small labelled sample of CIFAR-10 training images for the repo.

    python -m bench.device.cifar_sample ../shared/data/cifar10-train.tar.gz [--out shipped] \
        [--per-class 150] [--queries-per-class 5] [--holdout 500] [--max-bytes 1000000]

Writes `<out>/cifar10-sample/<class>/<nnnn>.jpg` (indexed by `make demo`, labels from the folders)
from the images the shipped backbone's k-NN memory held, and `<out>/cifar10-queries/<class>/`
from its held-out images (to drop on the page). The JPEGs are re-encoded at the highest quality
(95 down to 50) at which both folders fit in `--max-bytes`: a 32-px JPEG is ~600 bytes at
quality 75, most of it tables, so about 1,500 images fit in 1 MB.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image

from training.data import list_images, resolve_source, split_holdout

ROOT = Path(__file__).resolve().parents[2]

SAMPLE, QUERIES = "cifar10-sample", "cifar10-queries"


def _pick(files: list[Path], labels: list[int], per_class: int) -> list[tuple[Path, int]]:
    """The first `per_class` images of each class, in sorted order (reproducible)."""
    seen: dict[int, int] = {}
    out = []
    for f, y in zip(files, labels, strict=True):
        if seen.get(y, 0) < per_class:
            seen[y] = seen.get(y, 0) + 1
            out.append((f, y))
    return out


def _encode(path: Path, quality: int) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def build_sample(
    source: str,
    out: Path,
    per_class: int = 150,
    queries_per_class: int = 5,
    holdout: int = 500,
    max_bytes: int = 1_000_000,
    cache: str = "var/cache",
) -> dict:
    """Write the sample and query folders under `out`; returns counts, quality and bytes."""
    images = list_images(resolve_source(source, cache))
    memory, held = split_holdout(images, holdout)
    picks = {
        SAMPLE: _pick(memory.files, memory.labels, per_class),
        QUERIES: _pick(held.files, held.labels, queries_per_class),
    }
    for quality in range(95, 49, -5):
        blobs = {k: [_encode(f, quality) for f, _ in v] for k, v in picks.items()}
        total = sum(len(b) for v in blobs.values() for b in v)
        if total <= max_bytes:
            break
    else:
        raise ValueError(f"{total} bytes at quality 50 > {max_bytes}: lower --per-class")
    for key, items in picks.items():
        shutil.rmtree(out / key, ignore_errors=True)
        for (f, y), blob in zip(items, blobs[key], strict=True):
            dst = out / key / images.classes[y] / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(blob)
    return {
        "sample": len(picks[SAMPLE]),
        "queries": len(picks[QUERIES]),
        "quality": quality,
        "bytes": total,
        "classes": images.classes,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="cifar10-train.tar.gz (or its folder)")
    ap.add_argument("--out", default=str(ROOT / "shipped"))
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--queries-per-class", type=int, default=5)
    ap.add_argument("--holdout", type=int, default=500, help="as the backbone's evaluation")
    ap.add_argument("--max-bytes", type=int, default=1_000_000)
    ap.add_argument("--cache", default="var/cache")
    args = ap.parse_args(argv)
    report = build_sample(
        args.source,
        Path(args.out),
        args.per_class,
        args.queries_per_class,
        args.holdout,
        args.max_bytes,
        args.cache,
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
