"""Embedding throughput on the CPU: torch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8,
at several batch sizes, for ViT-S/16 at 224 px and the tiny preset (random init: speed only).

    .venv/bin/python bench/embed_throughput.py [--models vits16,tiny] [--batches 1,8,32]

Each model is packaged with the real export path (`write_package`, with its parity and int8
checks) into a temporary folder, then timed through the engines' `embed`. Prints a markdown
table and one JSON line with the date, the CPU model, the command, and ratios vs torch eager.
Goals (issue 3): ORT fp32 ≥ 2× torch eager at batch 32; int8 ≥ 1.5× ORT fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_knn_cpu import cpu_model  # noqa: E402
from core.engines import OrtEngine, TorchEngine  # noqa: E402
from core.settings import InferenceSettings  # noqa: E402
from core.vit import build_vit  # noqa: E402
from training.backbone import backbone_kwargs  # noqa: E402
from training.config import load_config  # noqa: E402
from training.export import write_package  # noqa: E402

ENGINES = ("torch eager fp32", "ORT fp32", "ORT int8")


def model_specs() -> dict[str, tuple[str, dict]]:
    """name → (timm arch, timm kwargs)."""
    tiny = load_config(ROOT / "configs" / "tiny.yaml").model
    vits = {"num_classes": 0, "global_pool": "token", "dynamic_img_size": True}
    return {
        "vits16": ("vit_small_patch16_224", vits),
        "tiny": (tiny.arch, backbone_kwargs(tiny)),
    }


def throughput(engine, batch: np.ndarray, seconds: float) -> float:
    """Images per second of engine.embed on `batch`, after one warm-up call."""
    engine.embed(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        engine.embed(batch)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n * len(batch) / elapsed


def bench_model(name: str, arch: str, kwargs: dict, batches: list[int], args, tmp: Path) -> list:
    torch.manual_seed(0)
    vit = build_vit(arch, kwargs)
    meta = {"arch": arch, "timm_kwargs": kwargs, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "crop_pct": 0.875,
            "provenance": {"source": "bench"}}  # fmt: skip
    t0 = time.perf_counter()
    pkg = write_package(vit, meta, tmp, name, quantize="int8")
    export_s = time.perf_counter() - t0
    size = vit.patch_embed.img_size[0]
    s = InferenceSettings(intra_op_threads=args.threads, inter_op_threads=1)
    engines = {
        ENGINES[0]: TorchEngine(pkg, s.model_copy(update={"device": "cpu"})),
        ENGINES[1]: OrtEngine(pkg, s),
        ENGINES[2]: OrtEngine(pkg, s.model_copy(update={"onnx_variant": "int8"})),
    }
    min_cos = engines[ENGINES[2]].meta.onnx["int8"].min_cosine
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
        ips = {k: throughput(e, x, args.seconds) for k, e in engines.items()}
        rows.append({"model": name, "batch": b, "images_per_s": ips,
                     "export_s": round(export_s, 1), "int8_min_cosine": min_cos})  # fmt: skip
        print(f"  {name} batch {b}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    head = ["model", "batch", *[f"{e} img/s" for e in ENGINES]]
    head += ["ORT fp32 / torch", "int8 / ORT fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ips = r["images_per_s"]
        cells = [r["model"], str(r["batch"]), *[f"{ips[e]:.1f}" for e in ENGINES],
                 f"{ips[ENGINES[1]] / ips[ENGINES[0]]:.2f}×",
                 f"{ips[ENGINES[2]] / ips[ENGINES[1]]:.2f}×"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vits16,tiny")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per cell")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    specs = model_specs()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            arch, kwargs = specs[name]
            rows += bench_model(name, arch, kwargs, batches, args, Path(tmp))
    print(table(rows))
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "rows": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
