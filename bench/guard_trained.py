"""The accuracy guard of every quantised variant on trained models, not random init (issue 27):
the demo model (what `make demo` trains when no backbone ships: configs/tiny.yaml, 8 epochs on
the 32-px shapes, 10 classes × 200, seed 0, as dinoserve/demo.py does) and the tiny preset
trained on CIFAR-10 (400 photos per class of ../shared/data/cifar10-train.tar.gz).

    .venv/bin/python -m bench.guard_trained [--models demo,tiny-cifar] [--out var/bench/guard]

Each run is exported by the real path (`export_run`) with int8, int8-static and, when the
openvino extra is installed, int8-nncf, calibrated and guarded on labelled images the model was
not trained on (new shapes, seed 7; the next 80 CIFAR-10 photos of each class): 256
calibration images, 512 guard images, drawn disjoint. The export's thresholds are switched off
here so that every variant is kept with its figures; pass or fail is then judged with the
shipped thresholds (cosine ≥ 0.995, attention cosine ≥ 0.99, k-NN top-1 at most 0.5 points
below fp32's). Prints a markdown table and one JSON line. Models stay under --out (never
committed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tarfile
import time
from pathlib import Path

from bench.embed_throughput import CIFAR
from core.package import read_meta
from evaluation.variant_bench import cpu_model, openvino_installed
from evaluation.variant_guard import MAX_KNN_DROP, MIN_ATTENTION_COSINE, MIN_COSINE
from training.config import load_config
from training.export import QuantizeOptions, export_run
from training.synthetic import make_synthetic
from training.train import train

ROOT = Path(__file__).resolve().parents[1]
OFF = QuantizeOptions(min_cosine=1e-9, min_attention_cosine=1e-9, max_knn_drop=100)


def cifar_split(tar: Path, train: Path, guard: Path, n_train: int, n_guard: int) -> None:
    """The first `n_train` photos of each class (archive order) into `train`, the next
    `n_guard` into `guard`, as class folders."""
    if train.is_dir() and guard.is_dir():
        return
    seen: dict[str, int] = {}
    with tarfile.open(tar, "r|*") as archive:
        for m in archive:
            if not m.isfile() or not m.name.lower().endswith(".jpg"):
                continue
            label = Path(m.name).parent.name
            i = seen.get(label, 0)
            seen[label] = i + 1
            if i >= n_train + n_guard:
                continue
            dest = (train if i < n_train else guard) / label
            dest.mkdir(parents=True, exist_ok=True)
            f = archive.extractfile(m)
            assert f is not None
            (dest / Path(m.name).name).write_bytes(f.read())


def prepare(name: str, out: Path) -> tuple[Path, Path]:
    """(training data, guard source) of a model, made under `out`."""
    if name == "demo":
        data, guard = out / "demo-data", out / "demo-guard"
        if not data.is_dir():
            make_synthetic(data, 200, 32, seed=0, masks=True)  # dinoserve.demo.ensure_images
        if not guard.is_dir():
            make_synthetic(guard, 80, 32, seed=7)
        return data, guard
    data, guard = out / "cifar-train", out / "cifar-guard"
    cifar_split(CIFAR, data, guard, 400, 80)
    return data, guard


def guard_model(name: str, out: Path) -> list[dict]:
    data, guard = prepare(name, out)
    run = out / f"{name}-run"
    t0 = time.perf_counter()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.train={data}"])
    result = train(cfg, run)
    train_s = time.perf_counter() - t0
    variants = ["int8", "int8-static"] + (["int8-nncf"] if openvino_installed() else [])
    pkg = export_run(run, out / "models", name, variants, calibration=guard, quant=OFF)
    rows = []
    for v, f in read_meta(pkg).onnx.items():
        if not f.guard:
            continue
        g = f.guard
        failed = []
        if g["min_cosine"] < MIN_COSINE:
            failed.append(f"cosine {g['min_cosine']:.4f} < {MIN_COSINE}")
        if g["min_attention_cosine"] < MIN_ATTENTION_COSINE:
            failed.append(f"attention {g['min_attention_cosine']:.4f} < {MIN_ATTENTION_COSINE}")
        if g.get("knn_top1") is not None and g["knn_top1"] < g["knn_top1_fp32"] - MAX_KNN_DROP:
            failed.append("k-NN")
        rows.append(
            {
                "model": name,
                "variant": v,
                "knn_init": result.knn_start,
                "knn_trained": result.knn_end,
                "train_s": round(train_s),
                "passed": not failed,
                "why": "; ".join(failed),
                **g,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,tiny-cifar")
    ap.add_argument("--out", default="var/bench/guard")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for name in args.models.split(","):
        rows += guard_model(name, out)
        print(f"{name} done", file=sys.stderr, flush=True)
    print(
        "| model (k-NN top-1 at init → trained, training's own held-out) | variant | min cosine | "
        "min attention cosine | k-NN top-1 fp32 → variant | guard |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        knn = f"{r['knn_top1_fp32']:.2f} → {r['knn_top1']:.2f} % ({r['knn_queries']} queries)"
        print(
            f"| {r['model']} ({r['knn_init']:.1f} → {r['knn_trained']:.1f} %) | {r['variant']} "
            f"| {r['min_cosine']:.4f} | {r['min_attention_cosine']:.4f} | {knn} "
            f"| {'pass' if r['passed'] else 'fail: ' + r['why']} |"
        )
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "command": shlex.join([".venv/bin/python", "-m", "bench.guard_trained", *sys.argv[1:]]),
        "rows": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
