"""`dinoserve index` end to end on the CPU against the engine alone at the same batch (issue 27).

    .venv/bin/python -m bench.index_e2e [--images 1024] [--size 500x375] [--rounds 3]
        [--engine openvino --variant int8-nncf] [--threads 2] [--decode-nice 19,0]

A folder of JPEGs is made once under `.data/` (CIFAR-10 images from
../shared/data/cifar10-train.tar.gz, upscaled to `--size` so that decoding costs what a photo's
does; class folders). ViT-S/16 at 224 px (random init, as bench/embed_throughput.py makes it) is
packaged by the real export path with the variant given (default OpenVINO int8-nncf, the fastest
that passes the guard on this project's CPU, bench/RESULTS.md). One loaded engine then runs, in
interleaved rounds:
- **engine**: `engine.embed` alone on pre-decoded tensors, batch = DINOSERVE_INDEXER__BATCH (32),
  as many images as the folder holds;
- **index**: `indexer.run.run_index` (what `dinoserve index DIR --labels dirs` runs once the
  model is loaded) on the folder into a fresh embedded store: read, hash, decode, embed, upsert,
  optimize; img/s = images ÷ the run's own seconds (what `dinoserve index` prints).
`--decode-nice 19,0` indexes once per niceness of the decode threads in each round (0: as before
they yielded the CPU to the engine, indexer/ingest.py). Phases rotate from round to round; medians
over the rounds and the ratio index ÷ engine (goal ≥ 0.90). Also, once: decoding alone
(one thread, ms per image) and the store alone (upsert + optimize of as many random vectors).
Prints a markdown table and one JSON line with the date, the CPU, the command and every round.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.embed_throughput import CIFAR, random_package
from core import store
from core.engine_choice import load_engine
from core.engines import Engine
from core.package import PackageError, resolve
from core.settings import InferenceSettings, Settings
from evaluation.variant_bench import cpu_model
from indexer import ingest
from indexer.ingest import Limits, _decode
from indexer.run import IndexRequest, list_items, run_index

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_NICE = ingest.DECODE_NICE


def make_jpegs(tar: Path, out: Path, n: int, size: tuple[int, int], quality: int = 90) -> Path:
    """`n` CIFAR-10 images (n / 10 per class, in archive order) as `size` JPEGs in class folders
    under `out`; kept when already there."""
    done = out / ".complete"
    if done.is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    per_class: dict[str, int] = {}
    with tarfile.open(tar, "r|*") as archive:
        for m in archive:
            if not m.isfile() or not m.name.lower().endswith(".jpg"):
                continue
            label = Path(m.name).parent.name
            if per_class.get(label, 0) >= n // 10:
                continue
            f = archive.extractfile(m)
            assert f is not None
            with Image.open(f) as im:
                big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
            (out / label).mkdir(parents=True, exist_ok=True)
            big.save(out / label / Path(m.name).name, quality=quality)
            per_class[label] = per_class.get(label, 0) + 1
            if sum(per_class.values()) >= n:
                break
    done.write_text("")
    return out


def bench_package(models: Path, variant: str, calibration: Path) -> Path:
    """ViT-S/16 at random init with `variant`, packaged once under `models/<variant>/` (NNCF's
    calibration takes minutes) and reused by later runs."""
    registry = models / variant
    try:
        return resolve(registry, "vits16")
    except PackageError:
        pass
    quantize = [] if variant == "fp32" else [variant]
    return random_package("vits16", registry, quantize, "bench", calibration, guard_images=128)[1]


def engine_rate(engine: Engine, rows: np.ndarray, images: int, batch: int) -> float:
    """img/s of engine.embed over `images` images in batches of `batch` (cycling `rows`)."""
    engine.embed(rows[:batch])  # warm
    t0 = time.perf_counter()
    for i in range(0, images, batch):
        idx = np.arange(i, min(i + batch, images)) % len(rows)
        engine.embed(rows[idx])
    return images / (time.perf_counter() - t0)


def index_rate(settings: Settings, engine: Engine, folder: Path, tmp: Path, r: int) -> float:
    """img/s of one `run_index` of the folder into a fresh embedded store (its report's)."""
    s = settings.model_copy(update={"qdrant_path": tmp / f"qdrant-{r}"})
    req = IndexRequest(str(folder), collection="bench", labels="dirs")
    items = list_items(req)
    db = store.open_store(s)
    try:
        report = run_index(s, db, engine, req, progress=False, items=items)
    finally:
        db.close()
        shutil.rmtree(tmp / f"qdrant-{r}", ignore_errors=True)
    assert report.indexed == len(items), report.summary()
    return report.indexed / report.seconds


def decode_ms(engine: Engine, folder: Path, n: int) -> float:
    """Milliseconds per image to read, hash-free decode and preprocess on one thread."""
    files = sorted(folder.rglob("*.jpg"))[:n]
    datas = [f.read_bytes() for f in files]
    t0 = time.perf_counter()
    for d in datas:
        _decode(d, engine, Limits())
    return 1000 * (time.perf_counter() - t0) / len(datas)


def store_rate(settings: Settings, dim: int, n: int, batch: int, tmp: Path) -> float:
    """Points/s of upsert (in batches of `batch`) and optimize of `n` random vectors."""
    s = settings.model_copy(update={"qdrant_path": tmp / "qdrant-store"})
    db = store.open_store(s)
    rng = np.random.default_rng(0)
    try:
        physical = db.ensure_collection("bench", "v", dim)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            ids = [store.point_id(f"file:///x/{j}.jpg") for j in range(i, min(i + batch, n))]
            vecs = rng.standard_normal((len(ids), dim)).astype(np.float32)
            db.upsert(physical, ids, vecs, [{"uri": f"/x/{j}", "label": "a"} for j in ids])
        db.optimize(physical)
        return n / (time.perf_counter() - t0)
    finally:
        db.close()
        shutil.rmtree(tmp / "qdrant-store", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", default="500x375", help="JPEG width×height")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="openvino")
    ap.add_argument("--variant", default="int8-nncf")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=None, help="default DINOSERVE_INDEXER__BATCH")
    ap.add_argument("--workers", type=int, default=None, help="default DINOSERVE_INDEXER__WORKERS")
    ap.add_argument("--data", default=str(ROOT / ".data"))
    ap.add_argument(
        "--decode-nice",
        default=str(ingest.DECODE_NICE),
        help="the decode threads' niceness of each index phase, e.g. 19,0 (0: as before issue "
        f"27's fix; default {ingest.DECODE_NICE}, indexer/ingest.py's)",
    )
    ap.add_argument("--calibration", default=str(CIFAR))
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    folder = make_jpegs(
        Path(args.calibration), Path(args.data) / f"jpeg-{w}x{h}-{args.images}", args.images, (w, h)
    )
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pkg = bench_package(Path(args.data) / "models", args.variant, Path(args.calibration))
        inference = InferenceSettings(
            intra_op_threads=args.threads, inter_op_threads=1, onnx_variant=args.variant
        )
        settings = Settings(
            models_dir=pkg.parent.parent,
            model=str(pkg),
            engine=args.engine,
            inference=inference,
            index_dir=tmp / "index",
            blob_dir=tmp / "blobs",
        )
        indexer = settings.indexer.model_copy(
            update={k: v for k, v in (("batch", args.batch), ("workers", args.workers)) if v}
        )
        settings = settings.model_copy(update={"indexer": indexer})
        batch = settings.indexer.batch
        engine = load_engine(pkg, args.engine, inference)
        files = sorted(folder.rglob("*.jpg"))
        rows = np.stack(
            [_decode(f.read_bytes(), engine, Limits())[0] for f in files[: min(256, len(files))]]
        )
        per_image_ms = decode_ms(engine, folder, 256)
        store_pts = store_rate(settings, engine.dim, len(files), batch, tmp)
        nices = [int(n) for n in args.decode_nice.split(",")]
        phases = ["engine"] + [f"index, decode at nice {n}" for n in nices]
        runs: dict[str, list[float]] = {k: [] for k in phases}
        for r in range(args.rounds):
            for what in phases[r % len(phases) :] + phases[: r % len(phases)]:  # rotated
                time.sleep(0.5)  # the other phase's spinning threads stop
                if what == "engine":
                    runs[what].append(engine_rate(engine, rows, len(files), batch))
                    continue
                ingest.DECODE_NICE = int(what.rsplit(" ", 1)[1])
                runs[what].append(index_rate(settings, engine, folder, tmp, r))
            ingest.DECODE_NICE = SHIPPED_NICE
            print(
                f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in runs.items()),
                file=sys.stderr,
                flush=True,
            )
    med = {k: float(np.median(v)) for k, v in runs.items()}
    eng = med["engine"]
    print(
        "| model | engine | images | JPEG | batch | workers | run | img/s (median) | "
        "÷ engine alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k, v in med.items():
        print(
            f"| ViT-S/16 224 px | {args.engine} {args.variant} | {len(files)} | {w}×{h} "
            f"| {batch} | {settings.indexer.workers} | {k} | {v:.1f} | {v / eng:.2f} |"
        )
    print(
        f"\ndecode + preprocess alone: {per_image_ms:.2f} ms/image on one thread; store alone "
        f"(upsert + optimize): {store_pts:.0f} points/s"
    )
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "command": shlex.join([".venv/bin/python", "-m", "bench.index_e2e", *sys.argv[1:]]),
        "medians": med,
        "ratios": {k: v / eng for k, v in med.items()},
        "decode_ms": per_image_ms,
        "store_points_s": store_pts,
        "rounds": runs,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
