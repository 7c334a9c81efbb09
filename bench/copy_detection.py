"""Copy detection with the near-duplicate finder (discovery/duplicates.py), and its cost at scale.

    .venv/bin/python -m bench.copy_detection --model var/models/NAME/VERSION \
        [--data ../shared/data/cifar10-train.tar.gz] [--scale 1.0] [--thresholds 0.8,0.85,…]
    .venv/bin/python -m bench.copy_detection --random-init configs/tiny.yaml …   # reference
    .venv/bin/python -m bench.copy_detection --synthetic 100000                  # time, memory
    .venv/bin/python -m bench.copy_detection --write-train-set DIR [--data …]   # model's data

Copy detection: 1,000 × scale source images from the CIFAR-10 archive, each with 5 edited
copies (PIL, seeded: a random crop keeping 50–90 % of the area, resized back; colour jitter of
brightness, contrast and saturation by ×0.7–1.3; a text or logo overlay covering 0–20 % of the
image; a horizontal flip with probability 1/2; JPEG at quality 30–70), mixed into 20,000 ×
scale other images of the archive. Only images numbered below 4500 in each class are used:
the last 500 of each class are for training the model measured (`--write-train-set`).
Everything is indexed into a temporary embedded store with the given model package (ONNX
Runtime, one thread), the search index is built, and the finder runs at each threshold.

Scores, over pairs of images (all n·(n−1)/2 pairs of the collection):
  - a true pair: two images made from the same source (the source and its copies: 15 pairs
    per source);
  - a found pair: two images in the same group.
  precision = |true ∩ found| / |found|,  recall = |true ∩ found| / |true|.
Also `complete`: the fraction of sources whose six images all fall in one group. A pair of
two distractors that CIFAR itself holds twice counts against precision.

`--synthetic N`: N 384-d unit vectors (2,000 clusters at cosine ≈ 0.7 to their centre, like
image embeddings of a class) of which 2 % are planted near-copies (cosine ≈ 0.97 to an
original) in a fresh Edge store; the finder's time and the process's peak RSS, beside the
baseline of the same k-NN queries sent one at a time (timed on a sample, extrapolated).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import random
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from bench.store_scale import cpu_model, rss_mib
from core.store import Match, point_id
from discovery.duplicates import find_duplicates, search_ef
from tests.stores import edge_store

TRAIN_FROM = 4500  # images numbered from here on in each class train the model, not measured
COPIES = 5
DEFAULT_THRESHOLDS = "0.7,0.75,0.8,0.85,0.88,0.9,0.92,0.94,0.96,0.98"


def cifar(path: Path) -> list[tuple[str, bytes]]:
    """(class/number, JPEG bytes) of every image of the archive, sorted by name."""
    out = []
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                cls, num = m.name.split("/")[-2:]
                out.append((f"{cls}/{num[:-4]}", tar.extractfile(m).read()))  # type: ignore[union-attr]
    return sorted(out)


def edit(img: Image.Image, rng: random.Random) -> bytes:
    """One edited copy (see the module docstring) as JPEG bytes."""
    w, h = img.size
    area = rng.uniform(0.5, 0.9)
    aspect = rng.uniform(0.8, 1.25)
    cw = min(w, max(1, round(w * (area * aspect) ** 0.5)))
    ch = min(h, max(1, round(h * (area / aspect) ** 0.5)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.7, 1.3))
    cover = rng.uniform(0.0, 0.2)  # of the area
    if cover > 0.005:
        ow, oh = max(1, round(w * cover**0.5)), max(1, round(h * cover**0.5))
        ox, oy = rng.randint(0, w - ow), rng.randint(0, h - oh)
        draw = ImageDraw.Draw(out)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if rng.random() < 0.5:  # a logo
            draw.ellipse((ox, oy, ox + ow, oy + oh), fill=colour)
        else:  # text
            draw.text((ox, oy), rng.choice(["©", "DINO", "abc", "42"]), fill=colour)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=rng.randint(30, 70))
    return buf.getvalue()


def make_set(images: list[tuple[str, bytes]], scale: float, out: Path, seed: int) -> dict:
    """Write sources, copies and distractors under `out`; returns uri → source (or None)."""
    pool = [(n, b) for n, b in images if int(n.split("/")[1]) < TRAIN_FROM]
    rng = random.Random(seed)
    rng.shuffle(pool)
    n_src, n_other = round(1000 * scale), round(20000 * scale)
    truth: dict[str, int | None] = {}
    out.mkdir(parents=True)
    for s, (_, data) in enumerate(pool[:n_src]):
        (out / f"s{s:05d}-0.jpg").write_bytes(data)
        truth[str(out / f"s{s:05d}-0.jpg")] = s
        img = Image.open(io.BytesIO(data)).convert("RGB")
        for c in range(1, COPIES + 1):
            path = out / f"s{s:05d}-{c}.jpg"
            path.write_bytes(edit(img, rng))
            truth[str(path)] = s
    for i, (_, data) in enumerate(pool[n_src : n_src + n_other]):
        (out / f"o{i:06d}.jpg").write_bytes(data)
        truth[str(out / f"o{i:06d}.jpg")] = None
    return truth


def pairs(n: int) -> int:
    return n * (n - 1) // 2


def score(groups: list, truth: dict[str, int | None]) -> dict[str, float]:
    """Pairwise precision and recall and the complete sources (see the module docstring)."""
    true_pairs = sum(pairs(c) for c in Counter(v for v in truth.values() if v is not None).values())
    found = hit = complete = 0
    for g in groups:
        found += pairs(g.size)
        by_source = Counter(truth.get(m.uri) for m in g.members)
        by_source.pop(None, None)
        hit += sum(pairs(c) for c in by_source.values())
        complete += sum(1 for c in by_source.values() if c == COPIES + 1)
    sources = len({v for v in truth.values() if v is not None})
    return {
        "precision": hit / found if found else 1.0,
        "recall": hit / true_pairs if true_pairs else 1.0,
        "complete": complete / sources if sources else 1.0,
        "groups": len(groups),
        "grouped_images": sum(g.size for g in groups),
    }


def random_package(config: Path, out: Path, seed: int = 0) -> Path:
    """The config's ViT at a seeded random initialisation, as a package (the reference)."""
    import torch

    from core.vit import build_vit
    from training.config import load_config
    from training.export import config_meta, write_package

    meta = config_meta(load_config(config))
    meta["provenance"] = {"source": f"random init (bench/copy_detection.py, seed {seed})"}
    torch.manual_seed(seed)
    return write_package(build_vit(meta["arch"], meta["timm_kwargs"]), meta, out, "random-init")


def random_like(package_dir: Path, out: Path, seed: int = 0) -> Path:
    """The package's own ViT (architecture, input size, views, map smoothing) at a seeded
    random initialisation: the baseline that differs from it by the training alone."""
    import torch

    from core.package import read_meta
    from core.vit import build_vit
    from training.export import write_package

    src = read_meta(package_dir)
    meta = {
        "arch": src.arch,
        "timm_kwargs": src.timm_kwargs,
        "mean": src.mean,
        "std": src.std,
        "crop_pct": src.crop_pct,
        "views": src.views,
        "provenance": {"source": f"random init like {src.name} {src.version} (seed {seed})"},
    }
    torch.manual_seed(seed)
    return write_package(build_vit(src.arch, src.timm_kwargs), meta, out, "random-init")


def engine_for(package: Path):
    """The package's ONNX model on one thread (the engine is the model: it preprocesses too)."""
    from core.engine_choice import load_engine
    from core.settings import InferenceSettings

    return load_engine(package, "onnxruntime", InferenceSettings(intra_op_threads=1))


def copy_detection(args: argparse.Namespace, work: Path) -> dict:
    from indexer.ingest import IngestOptions
    from indexer.pipeline import Indexer
    from indexer.sources import Item

    package = random_package(Path(args.random_init), work) if args.random_init else args.model
    t0 = time.perf_counter()
    truth = make_set(cifar(Path(args.data)), args.scale, work / "images", args.seed)
    made_s = time.perf_counter() - t0
    db = edge_store(work / "qdrant")
    t0 = time.perf_counter()
    items = [Item(uri) for uri in sorted(truth)]
    report = Indexer(
        db, engine_for(Path(package)), "copies", IngestOptions(batch=256, workers=1)
    ).run(items, progress=False)
    physical = db.resolve("copies")
    db.optimize(physical)
    index_s = time.perf_counter() - t0
    rows = []
    for t in [float(x) for x in args.thresholds.split(",")]:
        found = find_duplicates(db, physical, t, k=args.k)
        scores = score(found.groups, truth)
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}
        rows.append({"threshold": t, "seconds": round(found.seconds, 2), **rounded})
        print(json.dumps(rows[-1]), file=sys.stderr)
    db.close()
    return {
        "model": str(package),
        "images": len(truth),
        "indexed": report.indexed,
        "make_s": round(made_s, 1),
        "index_s": round(index_s, 1),
        "k": args.k,
        "peak_rss_mib": round(rss_mib("VmHWM")),
        "rows": rows,
    }


def synthetic(args: argparse.Namespace, work: Path) -> dict:
    n, dim = args.synthetic, 384
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((2000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_copy = n // 50
    db = edge_store(work / "qdrant")
    physical = db.create_physical("synthetic__v1", dim)
    t0 = time.perf_counter()
    originals = []
    for lo in range(0, n - n_copy, 10_000):
        m = min(10_000, n - n_copy - lo)
        noise = rng.standard_normal((m, dim), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        v = 0.7 * centres[rng.integers(0, 2000, m)] + 0.714 * noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if len(originals) < n_copy:
            originals.extend(v[: n_copy - len(originals)])
        ids = [point_id(f"p{lo + i}") for i in range(m)]
        db.upsert(physical, ids, v, [{"uri": f"p{lo + i}"} for i in range(m)])
    orig = np.asarray(originals)
    noise = rng.standard_normal(orig.shape, dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = 0.97 * orig + 0.243 * noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    ids = [point_id(f"c{i}") for i in range(n_copy)]
    db.upsert(physical, ids, copies, [{"uri": f"c{i}"} for i in range(n_copy)])
    db.optimize(physical)
    load_s = time.perf_counter() - t0
    rss_before = rss_mib()
    found = find_duplicates(db, physical, args.synthetic_threshold, k=args.k)
    peak = rss_mib("VmHWM")
    # Baseline: the same queries one at a time, on a sample.
    sample = orig[: args.baseline_sample]
    t0 = time.perf_counter()
    for v in sample:
        db.search(physical, v, args.k + 1, Match(), fields=())
    one_s = (time.perf_counter() - t0) / len(sample) * n
    t0 = time.perf_counter()
    for lo in range(0, len(sample), 256):
        db.search_many(physical, sample[lo : lo + 256], args.k + 1)
    many_s = (time.perf_counter() - t0) / len(sample) * n
    # The finder's narrower search (search_ef) against the layout's: time, and copies found.
    copy_ids = [point_id(f"c{i}") for i in range(len(sample))]
    narrow_ef = {}
    for ef in (None, search_ef(args.k)):
        t0 = time.perf_counter()
        hits = []
        for lo in range(0, len(sample), 256):
            hits += db.search_many(physical, sample[lo : lo + 256], args.k + 1, ef=ef)
        seconds = (time.perf_counter() - t0) / len(sample) * n
        pairs = zip(copy_ids, hits, strict=True)
        found_copies = sum(c in {h.id for h in near} for c, near in pairs)
        narrow_ef[str(ef or db.layout.hnsw_ef)] = {
            "queries_s": round(seconds, 1),
            "copies_found": f"{found_copies}/{len(sample)}",
        }
    db.close()
    planted = sum(1 for g in found.groups if any(m.uri.startswith("c") for m in g.members))
    return {
        "points": n,
        "dim": dim,
        "load_and_index_s": round(load_s, 1),
        "threshold": args.synthetic_threshold,
        "k": args.k,
        "duplicates_s": round(found.seconds, 1),
        "groups": len(found.groups),
        "groups_with_a_planted_copy": planted,
        "planted": n_copy,
        "rss_before_mib": round(rss_before),
        "peak_rss_mib": round(peak),
        "queries_only_batched_s": round(many_s, 1),
        "queries_one_at_a_time_s": round(one_s, 1),
        "batched_speedup": round(one_s / many_s, 2),
        "by_ef": narrow_ef,
    }


def write_train_set(data: Path, out: Path) -> None:
    """The images the measurement leaves out (numbered ≥ 4500 per class), in class folders."""
    n = 0
    for name, blob in cifar(data):
        cls, num = name.split("/")
        if int(num) >= TRAIN_FROM:
            (out / cls).mkdir(parents=True, exist_ok=True)
            (out / cls / f"{num}.jpg").write_bytes(blob)
            n += 1
    print(f"wrote {n} images to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model package directory")
    p.add_argument("--random-init", default=None, help="a training config: its ViT at random init")
    p.add_argument("--data", default="../shared/data/cifar10-train.tar.gz")
    p.add_argument("--scale", type=float, default=1.0, help="× (1,000 sources, 20,000 others)")
    p.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", type=int, default=0, help="time N synthetic vectors instead")
    p.add_argument("--synthetic-threshold", type=float, default=0.9)
    p.add_argument("--baseline-sample", type=int, default=2000)
    p.add_argument("--write-train-set", default=None, help="write the training images there")
    p.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    if args.write_train_set:
        write_train_set(Path(args.data), Path(args.write_train_set))
        return
    if not (args.synthetic or args.model or args.random_init):
        p.error("give --model, --random-init or --synthetic")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        run = synthetic(args, Path(tmp)) if args.synthetic else copy_detection(args, Path(tmp))
    run.update(date=dt.date.today().isoformat(), cpu=cpu_model(), command=" ".join(sys.argv))
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
