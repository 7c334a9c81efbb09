"""The shipped demo backbone (shipped/models/demo-scenes): its data, its shipping and its figures.

    .venv/bin/python -m bench.demo_backbone data      # the training scenes (var/train-scenes)
    .venv/bin/dinoserve train --config configs/demo.yaml --data var/train-scenes/images \
        --out runs/demo-scenes                         # stage 1: about 2 h on 2 CPU cores
    .venv/bin/python -m bench.demo_backbone ship runs/demo-scenes
    .venv/bin/dinoserve train --config configs/demo.yaml … --init PACKAGE model.img_size=96 …
    .venv/bin/python -m bench.demo_backbone ship runs/demo96   # stage 2 (its exact command:
                                                    # shipped/runs/demo-scenes/README.md)
    .venv/bin/python -m bench.demo_backbone measure [--model shipped/models/demo-scenes/VERSION]

Seeds keep the sets apart: the backbone trains on scenes of seed 1000 (1,000 per class; the last
40 of each class are training's own k-NN queries); the demo indexes seed 0 (200 per class) and
offers seed 12345 (5 per class) on the page; `measure` scores held-out scenes of seed 777 (40 per
class) against the demo's index set. No image of a measured set was trained on.

`ship` packages the run's teacher (training/export.py: ONNX with attention, parity checked), then
stores its weights in fp16 (bench/device/ship_backbone.py's compaction, parity checked again) so
the package stays under the 5 MB the repository allows, adds a picture of its attention to the
model card, and keeps the run's config.yaml, metrics and curves in shipped/runs/demo-scenes.

`measure`, for the shipped backbone and the same architecture at random initialisation (seed 0)
in one run:
  - k-NN top-1/top-5 (k = 20, T = 0.07, evaluation/knn.py) of the 400 held-out scenes and of the
    demo's 50 page queries, the demo's 2,000 indexed scenes as the labelled memory; of the 400
    held-out scenes against the 10,000 training scenes too (DINO's eval_knn takes its train
    split as the memory); and what the first page query (star/00000.png) is classified as;
  - the attention-mask Jaccard (evaluation/masks.py, threshold 0.6) on the held-out scenes;
  - copy detection as bench/copy_detection.py edits copies (5 per source), 200 sources among
    2,000 other scenes, at the default duplicate threshold and a sweep;
  - clusters at k = 10 of the demo's indexed scenes (discovery/clusters.py's default, spectral
    on the neighbour graph, and spherical k-means as the baseline): NMI and purity at seed 0,
    and the NMI of seeds 0–4, since for k-means on these points one seed is a draw.
The random init's Jaccard depends on the draw (one seed's best head scored 0.08, another's
0.43: its maps are near uniform, and the ties its threshold breaks can favour the bright
object), so the masks and the k-NN are measured for `--baseline-seeds` random inits (0, 1, …)
and the backbone is compared with their mean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
NAME = "demo-scenes"
TRAIN_SEED, TRAIN_PER_CLASS = 1000, 1000
INDEX_SEED, QUERY_SEED, HELDOUT_SEED = 0, 12345, 777
PICTURE = "attention_scenes.png"
CLUSTER_SEEDS = (0, 1, 2, 3, 4)
RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "summary.json")


def make_data(out: Path) -> Path:
    """The training scenes of the shipped backbone."""
    from training.scenes import make_scenes

    return make_scenes(out, TRAIN_PER_CLASS, seed=TRAIN_SEED)


def ship(run_dir: Path, models_dir: Path, runs_dir: Path) -> Path:
    """Export the run's teacher, compact it to fp16 weights, keep the run's record beside it."""
    from bench.device.ship_backbone import compact
    from core.vit import build_vit
    from training.config import load_config
    from training.export import export_run
    from training.scenes import CLASSES, make_scenes

    with tempfile.TemporaryDirectory() as tmp:
        # The demo's export choices (eval.views) are configs/demo.yaml's, even for a run made
        # before it held them.
        views = load_config(CONFIG).eval.views
        fp32 = export_run(run_dir, Path(tmp) / "models", NAME, activate=False, views=views)
        meta = json.loads((fp32 / "model.json").read_text())
        vit = build_vit(meta["arch"], meta["timm_kwargs"])
        from safetensors.torch import load_file

        # The weights as they will be stored (fp16), so the parity check compares one network.
        weights = load_file(fp32 / "backbone.safetensors")
        vit.load_state_dict({k: v.half().float() for k, v in weights.items()})
        examples = make_scenes(Path(tmp) / "examples", 1, seed=HELDOUT_SEED + 1)
        files = [examples / c / "00000.png" for c in CLASSES[:6]]
        out = compact(fp32, models_dir, vit, files, picture=PICTURE, what="demo scene")
    # Only the newest shipped version is kept: the repository holds one demo backbone.
    for old in (models_dir / NAME).iterdir():
        if old.is_dir() and old.name != out.name and not old.name.startswith("."):
            shutil.rmtree(old)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for f in RUN_FILES:
        if (run_dir / f).is_file():
            shutil.copyfile(run_dir / f, runs_dir / f)
    return out


def _scene_sets(work: Path) -> dict[str, Path]:
    from training.scenes import make_scenes

    return {
        "memory": make_scenes(work / "memory", 200, seed=INDEX_SEED),
        "queries": make_scenes(work / "queries", 5, seed=QUERY_SEED),
        "heldout": make_scenes(work / "heldout", 40, seed=HELDOUT_SEED),
        # The backbone's own training scenes (the same seed), as DINO's eval_knn takes its
        # train split for the labelled memory; the queries stay held out.
        "train": make_scenes(work / "train", TRAIN_PER_CLASS, seed=TRAIN_SEED),
    }


def copy_set(work: Path, seed: int = 4242) -> dict[str, int | None]:
    """200 source scenes with 5 edited copies each among 2,000 others; uri → source or None."""
    from bench.copy_detection import COPIES, edit
    from training.scenes import make_scenes

    src = make_scenes(work / "copy-sources", 20, seed=seed)
    other = make_scenes(work / "copy-others", 200, seed=seed + 1)
    out = work / "copies"
    out.mkdir()
    rng = random.Random(seed)
    truth: dict[str, int | None] = {}
    for s, path in enumerate(sorted(src.rglob("*.png"))):
        dst = out / f"s{s:05d}-0.png"
        shutil.copyfile(path, dst)
        truth[str(dst)] = s
        img = Image.open(path).convert("RGB")
        for c in range(1, COPIES + 1):
            copy = out / f"s{s:05d}-{c}.jpg"
            copy.write_bytes(edit(img, rng))
            truth[str(copy)] = s
    for i, path in enumerate(sorted(other.rglob("*.png"))):
        dst = out / f"o{i:05d}.png"
        shutil.copyfile(path, dst)
        truth[str(dst)] = None
    return truth


def copy_detection(package: Path, work: Path, thresholds: list[float]) -> dict:
    from bench.copy_detection import engine_for, score
    from discovery.duplicates import find_duplicates
    from indexer.ingest import IngestOptions
    from indexer.pipeline import Indexer
    from indexer.sources import Item
    from tests.stores import edge_store

    truth = copy_set(work)
    db = edge_store(work / "qdrant-copies")
    try:
        Indexer(db, engine_for(package), "copies", IngestOptions(batch=128, workers=1)).run(
            [Item(uri) for uri in sorted(truth)], progress=False
        )
        physical = db.resolve("copies")
        db.optimize(physical)
        rows = []
        for t in thresholds:
            found = find_duplicates(db, physical, t, k=10)
            s = score(found.groups, truth)
            rows.append({"threshold": t, **{k: round(v, 4) for k, v in s.items()}})
    finally:
        db.close()
    return {"images": len(truth), "rows": rows}


def first_star(package: Path, memory: Path, queries: Path) -> dict:
    """What the page's first held-out star is classified as (the service's vote, k = 20)."""
    import numpy as np

    from bench.copy_detection import engine_for
    from core.knn import knn_vote
    from evaluation.embed import embed_entries
    from evaluation.sources import labels_of, list_entries

    engine = engine_for(package)
    entries = list_entries(memory)
    emb, idx = embed_entries(engine, memory, entries, progress=False)
    labels = labels_of(entries, memory)
    with Image.open(queries / "star" / "00000.png") as im:
        q = engine.embed_images([im.convert("RGB")])[0]
    sims = emb @ q
    nn = np.argsort(-sims)[:20]
    vote = knn_vote(sims[nn].tolist(), [labels[idx[i]] for i in nn], 0.07)
    return {"label": vote.label, "confidence": round(vote.confidence, 4)}


def measure_one(package: Path, name: str, sets: dict[str, Path], work: Path, args) -> dict:
    from bench.cluster_quality import quality
    from bench.copy_detection import engine_for
    from evaluation.knn import evaluate_knn
    from evaluation.masks import evaluate_masks
    from training.scenes import masks_dir_for

    engine = engine_for(package)
    t0 = time.perf_counter()
    held = evaluate_knn(engine, sets["memory"], sets["heldout"], progress=False)
    page = evaluate_knn(engine, sets["memory"], sets["queries"], progress=False)
    held_train = evaluate_knn(engine, sets["train"], sets["heldout"], progress=False)
    masks = evaluate_masks(engine, sets["heldout"], masks_dir_for(sets["heldout"]), progress=False)
    out = {
        "model": name,
        "package": str(package),
        "knn_heldout": {"top1": held.top1, "top5": held.top5, "n": held.n_val},
        "knn_page_queries": {"top1": page.top1, "top5": page.top5, "n": page.n_val},
        "knn_heldout_train_memory": {
            "top1": held_train.top1,
            "top5": held_train.top5,
            "memory": held_train.n_train,
        },
        "first_star": first_star(package, sets["memory"], sets["queries"]),
        "masks": {
            "mean": masks.mean,
            "best": masks.best,
            "per_head": masks.per_head,
            "object_mass": masks.object_mass,
            "chance": masks.chance,
            "ceiling": masks.ceiling,
            "even_head": masks.even_head,
        },
    }
    print(json.dumps(out), file=sys.stderr)
    cw = work / f"copies-{name}"
    cw.mkdir()
    out["copies"] = copy_detection(package, cw, args.thresholds)
    q = quality(package, sets["memory"], work, name, CLUSTER_SEEDS, ("auto", "kmeans"))
    out["clusters"] = {"k": 10, "nmi": q["nmi"], "purity": q["purity"], "by_method": q["by_method"]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), file=sys.stderr)
    return out


def random_init(model: Path, config: Path | None, out: Path, seed: int) -> Path:
    """The baseline: the measured package's own ViT, input, views and map smoothing at a
    seeded random init, or the ViT of `config` where one is given."""
    from bench.copy_detection import random_like, random_package

    return random_package(config, out, seed) if config else random_like(model, out, seed)


def baseline_seeds(
    model: Path, config: Path | None, sets: dict[str, Path], work: Path, n: int
) -> dict:
    """The k-NN and the masks of `n` random inits of the architecture (seeds 0 … n−1)."""
    from bench.copy_detection import engine_for
    from evaluation.knn import evaluate_knn
    from evaluation.masks import evaluate_masks
    from training.scenes import masks_dir_for

    rows = []
    for seed in range(n):
        engine = engine_for(random_init(model, config, work / f"random-{seed}", seed))
        knn = evaluate_knn(engine, sets["memory"], sets["heldout"], progress=False)
        m = evaluate_masks(engine, sets["heldout"], masks_dir_for(sets["heldout"]), progress=False)
        rows.append(
            {
                "seed": seed,
                "knn_top1": knn.top1,
                "mask_mean": m.mean,
                "mask_best": m.best,
                "object_mass_best": max(m.object_mass),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    mean = {k: round(sum(r[k] for r in rows) / n, 4) for k in rows[0] if k != "seed"}
    return {"seeds": n, "mean": mean, "rows": rows}


def measure(args) -> dict:
    from bench.store_scale import cpu_model
    from core.package import resolve
    from core.settings import Settings

    model = Path(args.model) if args.model else resolve(ROOT / "shipped" / "models", NAME)
    default_t = Settings().discovery.duplicate_threshold
    args.thresholds = sorted({default_t, *args.thresholds})
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        work = Path(tmp)
        sets = _scene_sets(work / "sets")
        random_pkg = random_init(model, args.config, work / "random", 0)
        rows = [
            measure_one(model, "shipped", sets, work, args),
            measure_one(random_pkg, "random-init", sets, work, args),
        ]
        seeds = baseline_seeds(model, args.config, sets, work, args.baseline_seeds)
    shipped = rows[0]
    base = seeds["mean"]
    ratios = {
        "mask_mean": round(shipped["masks"]["mean"] / max(base["mask_mean"], 1e-9), 2),
        "mask_best": round(shipped["masks"]["best"] / max(base["mask_best"], 1e-9), 2),
        "object_mass_best": round(
            max(shipped["masks"]["object_mass"]) / max(base["object_mass_best"], 1e-9), 2
        ),
    }
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "command": "python -m bench.demo_backbone measure"
        + (f" --model {args.model}" if args.model else "")
        + (f" --config {args.config}" if args.config else "")
        + (f" --baseline-seeds {args.baseline_seeds}" if args.baseline_seeds != 8 else ""),
        "default_duplicate_threshold": default_t,
        "rows": rows,
        "random_init_seeds": seeds,
        "shipped_over_random_mean": ratios,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", type=Path, default=Path("var/train-scenes/images"))
    s = sub.add_parser("ship")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--models-dir", type=Path, default=ROOT / "shipped" / "models")
    s.add_argument("--runs-dir", type=Path, default=ROOT / "shipped" / "runs" / NAME)
    m = sub.add_parser("measure")
    m.add_argument("--model", default=None, help="package dir (default: the shipped one)")
    m.add_argument(
        "--thresholds",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.8, 0.85, 0.9, 0.95, 0.98],
    )
    m.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a config whose ViT is the random-init baseline (default: the measured package's "
        "own ViT, input size, views and map smoothing)",
    )
    m.add_argument(
        "--baseline-seeds",
        type=int,
        default=8,
        help="random inits whose mean k-NN and masks are the baseline (seeds 0 … N−1)",
    )
    m.add_argument("--tmp", default=None)
    m.add_argument("--out", type=Path, default=None, help="also write the JSON there")
    args = ap.parse_args()
    if args.cmd == "data":
        print(make_data(args.out))
    elif args.cmd == "ship":
        out = ship(args.run_dir, args.models_dir, args.runs_dir)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(json.dumps({"package": str(out), "bytes": size}))
    else:
        doc = measure(args)
        text = json.dumps(doc, indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
