"""Embedding throughput on the CPU: torch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8,
at several batch sizes, for ViT-S/16 at 224 px and the tiny preset (random init: speed only).

    .venv/bin/python -m bench.embed_throughput [--models vits16,tiny] [--batches 1,8,32]

Each model is packaged with the real export path (`write_package`, with its parity and int8
checks) into a temporary folder, then timed through the engines' `embed`. Prints a markdown
table and one JSON line with the date, the CPU model, the command, and ratios vs torch eager.
Goals (issue 3): ORT fp32 ≥ 2× torch eager at batch 32; int8 ≥ 1.5× ORT fp32.

The same run also measures the roofline that bounds any fp32 engine on this machine: the model's
FLOPs per image (torch's FlopCounterMode, attention included) and the fp32 GEMM rate of ORT's
own MatMul kernel and of torch's at the model's MLP shape at the largest batch. ORT fp32 cannot
embed faster than (ORT MatMul GFLOP/s) ÷ (GFLOP per image), whatever the graph does around it.
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
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from bench.train_knn_cpu import cpu_model
from core.engines import OrtEngine, TorchEngine
from core.settings import InferenceSettings
from core.vit import build_vit
from training.config import load_config
from training.export import config_meta, write_package

ROOT = Path(__file__).resolve().parents[1]

ENGINES = ("torch eager fp32", "ORT fp32", "ORT int8")


# ViT-S/16 is packaged with ImageNet's normalisation and DINO's k-NN crop (resize 256, crop 224).
IMAGENET_EVAL = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}


def model_specs() -> dict[str, tuple[str, dict]]:
    """name → (timm arch, timm kwargs)."""
    tiny = config_meta(load_config(ROOT / "configs" / "tiny.yaml"))
    vits = {"num_classes": 0, "global_pool": "token", "dynamic_img_size": True}
    at_224 = {**vits, "img_size": 224}  # the published families' serving size (dinoserve import)
    return {
        "vits16": ("vit_small_patch16_224", vits),
        "dinov2-s14-reg4": ("vit_small_patch14_reg4_dinov2", at_224),
        "dinov3-s16": ("vit_small_patch16_dinov3", at_224),
        "tiny": (tiny["arch"], tiny["timm_kwargs"]),
    }


def random_package(
    name: str, models: Path, quantize: str | None, source: str
) -> tuple[torch.nn.Module, Path]:
    """`name` (a key of model_specs) at random init (seed 0), packaged by the real export path (its
    parity check, and the cosine check for int8): the network and the package directory."""
    if name == "tiny":
        meta = config_meta(load_config(ROOT / "configs" / "tiny.yaml"))
    else:
        arch, kwargs = model_specs()[name]
        meta = {"arch": arch, "timm_kwargs": kwargs, **IMAGENET_EVAL}
    meta["provenance"] = {"source": source}
    torch.manual_seed(0)
    vit = build_vit(meta["arch"], meta["timm_kwargs"])
    return vit, write_package(vit, meta, models, name, quantize)


def throughput(engine, batch: np.ndarray, seconds: float) -> float:
    """Images per second of engine.embed on `batch`, after a pause and a warm-up.

    The pause lets the previous engine's worker threads stop spinning: torch's OpenMP pool and
    ORT's pools busy-wait for a while after a call, and on two cores the engine timed next
    would share the cores with them.
    """
    time.sleep(0.3)
    warm = time.perf_counter() + 0.3  # a few calls: a new session's first calls run slow
    while True:
        engine.embed(batch)
        if time.perf_counter() >= warm:
            break
    n, t0 = 0, time.perf_counter()
    while True:
        engine.embed(batch)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2:
            return n * len(batch) / elapsed


def median_throughput(
    cases: dict[Any, tuple[Any, np.ndarray]], seconds: float, rounds: int
) -> tuple[dict[Any, float], dict[Any, list[float]]]:
    """Median images/s per case, (engine, batch), over `rounds` rounds (and every round's
    figure). The cases take turns in each round, so a slow spell of the machine touches all
    of them alike."""
    runs: dict[Any, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (engine, batch) in cases.items():
            runs[k].append(throughput(engine, batch, seconds / rounds))
    return {k: float(np.median(v)) for k, v in runs.items()}, runs


def flops_per_image(vit: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image (2 per multiply-add), the attention products included.

    FlopCounterMode has no formula for the CPU fused-attention kernel, so the count runs with
    timm's explicit (unfused) attention, which does the same products as matmuls.
    """
    fused = {m: m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")}
    try:
        for m in fused:
            m.fused_attn = False
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            vit(torch.zeros(1, 3, size, size))
    finally:
        for m, was in fused.items():
            m.fused_attn = was
    return float(counter.get_total_flops())


def _rate(fn, flops: float, seconds: float) -> float:
    """GFLOP/s of `fn`, after two warm-up calls."""
    fn(), fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 3:
        fn()
        n += 1
    return n * flops / elapsed / 1e9


def gemm_peaks(m: int, k: int, n: int, threads: int, seconds: float) -> dict[str, float]:
    """fp32 GFLOP/s of one (m×k)·(k×n) product in ONNX Runtime's MatMul kernel and in torch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    flops = 2.0 * m * k * n
    with torch.inference_mode():
        return {
            "ORT MatMul": _rate(lambda: session.run(None, {"x": x}), flops, seconds),
            "torch matmul": _rate(lambda: tx @ tw, flops, seconds),
        }


def roofline(vit: torch.nn.Module, size: int, batch: int, args) -> dict:
    """FLOPs per image and the fp32 GEMM rates at the model's MLP shape for `batch` images."""
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    dim = vit.embed_dim
    hidden = vit.blocks[0].mlp.fc1.out_features
    peaks = gemm_peaks(batch * tokens, dim, hidden, args.threads, min(args.seconds, 2.0))
    return {
        "gflop_per_image": flops_per_image(vit, size) / 1e9,
        "gemm_shape": [batch * tokens, dim, hidden],
        "gemm_gflop_s": peaks,
    }


def bench_model(name: str, batches: list[int], args, tmp: Path) -> list:
    t0 = time.perf_counter()
    vit, pkg = random_package(name, tmp, "int8", "bench")
    export_s = time.perf_counter() - t0
    size = vit.patch_embed.img_size[0]
    s = InferenceSettings(intra_op_threads=args.threads, inter_op_threads=1)
    engines = {
        ENGINES[0]: TorchEngine(pkg, s.model_copy(update={"device": "cpu"})),
        ENGINES[1]: OrtEngine(pkg, s),
        ENGINES[2]: OrtEngine(pkg, s.model_copy(update={"onnx_variant": "int8"})),
    }
    min_cos = engines[ENGINES[2]].meta.onnx["int8"].min_cosine
    roof = roofline(vit, size, max(batches), args)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
        cases = {k: (e, x) for k, e in engines.items()}
        ips, runs = median_throughput(cases, args.seconds, args.rounds)
        rows.append(
            {
                "model": name,
                "batch": b,
                "images_per_s": ips,
                "rounds": runs,
                "roofline": roof,
                "export_s": round(export_s, 1),
                "int8_min_cosine": min_cos,
            }
        )
        print(
            f"  {name} batch {b}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    head = ["model", "batch", *[f"{e} img/s" for e in ENGINES]]
    head += ["ORT fp32 / torch", "int8 / ORT fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ips = r["images_per_s"]
        cells = [
            r["model"],
            str(r["batch"]),
            *[f"{ips[e]:.1f}" for e in ENGINES],
            f"{ips[ENGINES[1]] / ips[ENGINES[0]]:.2f}×",
            f"{ips[ENGINES[2]] / ips[ENGINES[1]]:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def roofline_table(rows: list[dict]) -> str:
    """Per model: FLOPs, GEMM rates, the fp32 ceiling they imply, and the best ORT fp32 / torch
    ratio that ceiling allows at the largest batch."""
    head = [
        "model",
        "GFLOP / image",
        "GEMM shape (m·k·n)",
        "ORT MatMul GFLOP/s",
        "torch matmul GFLOP/s",
        "ORT fp32 ceiling img/s",
        "ORT fp32 measured, % of ceiling",
        "ceiling / torch eager (largest batch)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["model"] for r in rows):
        last = [r for r in rows if r["model"] == name][-1]
        roof, ips = last["roofline"], last["images_per_s"]
        peak = roof["gemm_gflop_s"]
        ceiling = peak["ORT MatMul"] / roof["gflop_per_image"]
        cells = [
            name,
            f"{roof['gflop_per_image']:.3f}",
            "·".join(map(str, roof["gemm_shape"])),
            f"{peak['ORT MatMul']:.0f}",
            f"{peak['torch matmul']:.0f}",
            f"{ceiling:.1f}",
            f"{100 * ips[ENGINES[1]] / ceiling:.0f} %",
            f"{ceiling / ips[ENGINES[0]]:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vits16,tiny")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell, all rounds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, batches, args, Path(tmp))
    print(table(rows))
    print()
    print(roofline_table(rows))
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "command": shlex.join([".venv/bin/python", "-m", "bench.embed_throughput", *sys.argv[1:]]),
        "rows": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
