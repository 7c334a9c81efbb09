"""Embedding throughput on the CPU: torch eager fp32 against ONNX Runtime fp32, dynamic int8 and
static int8, and OpenVINO fp32 / int8 (static QDQ, NNCF) when the extra is installed, at
several batch sizes, for ViT-S/16 at 224 px, the tiny preset and the demo preset (random init:
speed and the guard's figures only).

    .venv/bin/python -m bench.embed_throughput [--models vits16,tiny,demo] [--batches 1,32]
        [--calibration ../shared/data/cifar10-train.tar.gz] [--threads 2]

Each model is packaged with the real export path (`write_package`: parity, static int8
calibrated on `--calibration`'s images, the accuracy guard with k-NN on its held-out labelled
images), then timed through the engines' `embed`, each cell the median of interleaved rounds.
Prints markdown tables (img/s with ratios to torch eager of the same run; the guard's figures;
the roofline) and one JSON line with the date, the CPU model, the command and every round.

The roofline, measured in the same run: the model's FLOPs per image (torch's FlopCounterMode,
attention included), the fp32 GEMM rate of ORT's MatMul and torch's, and the int8 GEMM rate of
each runtime's int8 kernel (ORT QLinearMatMul and MatMulInteger, OpenVINO's int8 MatMul) at the
model's MLP shape at the largest batch ((197·B)×384×1536 for ViT-S/16). An int8 engine cannot
embed faster than (int8 GOP/s) ÷ (GOP per image); "achieved GOP/s" = GFLOP per image × img/s.
Goals (issue 27): the best variant ≥ 2.5× torch eager at batch 1 and 32, ≥ 50 % of its int8
GEMM at batch 32.
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
from core.engines import OrtEngine
from core.package import read_meta
from core.settings import InferenceSettings
from core.torch_engine import TorchEngine
from core.vit import build_vit
from evaluation.variant_bench import openvino_installed
from training.config import load_config
from training.export import QuantizeOptions, config_meta, write_package

ROOT = Path(__file__).resolve().parents[1]

BASELINE = "torch eager fp32"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-train.tar.gz"


# ViT-S/16 is packaged with ImageNet's normalisation and DINO's k-NN crop (resize 256, crop 224).
IMAGENET_EVAL = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}


def model_specs() -> dict[str, tuple[str, dict]]:
    """name → (timm arch, timm kwargs)."""
    tiny = config_meta(load_config(ROOT / "configs" / "tiny.yaml"))
    demo = config_meta(load_config(ROOT / "configs" / "demo.yaml"))
    vits = {"num_classes": 0, "global_pool": "token", "dynamic_img_size": True}
    at_224 = {**vits, "img_size": 224}  # the published families' serving size (dinoserve import)
    return {
        "vits16": ("vit_small_patch16_224", vits),
        "dinov2-s14-reg4": ("vit_small_patch14_reg4_dinov2", at_224),
        "dinov3-s16": ("vit_small_patch16_dinov3", at_224),
        "tiny": (tiny["arch"], tiny["timm_kwargs"]),
        "demo": (demo["arch"], demo["timm_kwargs"]),
    }


def random_package(
    name: str,
    models: Path,
    quantize: str | list[str] | None,
    source: str,
    calibration: Path | None = None,
    guard_images: int = 512,
) -> tuple[torch.nn.Module, Path]:
    """`name` (a key of model_specs) at random init (seed 0), packaged by the real export path (its
    parity check, and the accuracy guard of each quantised variant, on `calibration`'s images
    when given): the network and the package directory."""
    if name in ("tiny", "demo"):
        meta = config_meta(load_config(ROOT / "configs" / f"{name}.yaml"))
    else:
        arch, kwargs = model_specs()[name]
        meta = {"arch": arch, "timm_kwargs": kwargs, **IMAGENET_EVAL}
    meta["provenance"] = {"source": source}
    torch.manual_seed(0)
    vit = build_vit(meta["arch"], meta["timm_kwargs"])
    quant = QuantizeOptions(guard_images=guard_images)
    return vit, write_package(vit, meta, models, name, quantize, True, calibration, quant)


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


def int8_gemm_model(m: int, k: int, n: int, kind: str) -> bytes:
    """One int8 (m×k)·(k×n) product as an ONNX model.

    kind "qlinear": QLinearMatMul on uint8 x and int8 w (what ORT fuses the static variant's
    QDQ MatMuls into); "qlinear-s8": the same on int8 x (ORT's slow pair); "integer":
    MatMulInteger, uint8 × int8 → int32 (the dynamic variant's kernel); "qdq": float x →
    QuantizeLinear → DequantizeLinear → MatMul with a dequantised int8 w (the static variant's
    pattern as OpenVINO reads it; a float input). The others take int8/uint8 x.
    """
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    f = TensorProto.FLOAT
    init = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.array(0, np.uint8), "zu"),
    ]
    if kind == "qlinear":  # uint8 activations (what the static variant quantises them to)
        nodes = [
            helper.make_node("QLinearMatMul", ["x", "s", "zu", "w", "s", "z", "s", "zu"], ["y"])
        ]
        x_type, y_type = TensorProto.UINT8, TensorProto.UINT8
    elif kind == "qlinear-s8":
        nodes = [helper.make_node("QLinearMatMul", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"])]
        x_type, y_type = TensorProto.INT8, TensorProto.INT8
    elif kind == "integer":
        nodes = [helper.make_node("MatMulInteger", ["x", "w", "zu", "z"], ["y"])]
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
        x_type, y_type = f, f
    graph = helper.make_graph(
        nodes,
        "int8_gemm",
        [helper.make_tensor_value_info("x", x_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def int8_gemm_peaks(m: int, k: int, n: int, threads: int, seconds: float) -> dict[str, float]:
    """int8 GOP/s (2 per multiply-add) of one (m×k)·(k×n) product in each runtime's int8
    kernel: ORT's QLinearMatMul and MatMulInteger, and OpenVINO's (when installed)."""
    rng = np.random.default_rng(1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    ops = 2.0 * m * k * n
    out = {}
    for kind, name, x in (
        ("qlinear", "ORT QLinearMatMul u8s8", rng.integers(0, 256, (m, k), dtype=np.uint8)),
        ("qlinear-s8", "ORT QLinearMatMul s8s8", rng.integers(-127, 128, (m, k), dtype=np.int8)),
        ("integer", "ORT MatMulInteger u8s8", rng.integers(0, 256, (m, k), dtype=np.uint8)),
    ):
        sess = ort.InferenceSession(
            int8_gemm_model(m, k, n, kind), opts, providers=["CPUExecutionProvider"]
        )
        out[name] = _rate(lambda s=sess, x=x: s.run(None, {"x": x}), ops, seconds)
    if openvino_installed():
        import openvino as ov

        core = ov.Core()
        model = core.read_model(int8_gemm_model(m, k, n, "qdq"))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": str(threads)})
        request = compiled.create_infer_request()
        x = rng.standard_normal((m, k)).astype(np.float32)
        out["OpenVINO int8 MatMul (QDQ)"] = _rate(lambda: request.infer({"x": x}), ops, seconds)
    return out


def engines_for(pkg: Path, threads: int) -> dict[str, Any]:
    """Every engine × variant of the package that runs here, by its table name."""
    s = InferenceSettings(intra_op_threads=threads, inter_op_threads=1)
    meta = read_meta(pkg)
    out: dict[str, Any] = {
        "torch eager fp32": TorchEngine(pkg, s.model_copy(update={"device": "cpu"}))
    }
    for v, f in meta.onnx.items():
        if f.format == "onnx":
            out[f"ORT {v}"] = OrtEngine(pkg, s.model_copy(update={"onnx_variant": v}))
    if openvino_installed():
        from core.openvino_engine import OpenVinoEngine

        for v in meta.onnx:
            if v != "int8":  # OpenVINO's dynamic-int8 import is not its int8 path
                out[f"OpenVINO {v}"] = OpenVinoEngine(pkg, s.model_copy(update={"onnx_variant": v}))
    return out


def bench_model(name: str, batches: list[int], args, tmp: Path) -> list:
    t0 = time.perf_counter()
    variants = ["int8", "int8-static"] + (["int8-nncf"] if openvino_installed() else [])
    calibration = Path(args.calibration) if args.calibration else None
    if calibration is None:
        variants.remove("int8-static")
        variants = [v for v in variants if v != "int8-nncf"]
    vit, pkg = random_package(name, tmp, variants, "bench", calibration, args.guard_images)
    export_s = time.perf_counter() - t0
    size = vit.patch_embed.img_size[0]
    engines = engines_for(pkg, args.threads)
    meta = read_meta(pkg)
    guards = {v: f.guard for v, f in meta.onnx.items() if f.guard}
    roof = roofline(vit, size, max(batches), args)
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    roof["int8_gemm_gop_s"] = int8_gemm_peaks(
        max(batches) * tokens, vit.embed_dim, hidden, args.threads, min(args.seconds, 2.0)
    )
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
                "variants": list(meta.onnx),
                "guard": guards,
            }
        )
        print(
            f"  {name} batch {b}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    """img/s per engine × variant, each as a ratio to torch eager fp32 of the same run."""
    names = list(dict.fromkeys(k for r in rows for k in r["images_per_s"]))
    head = ["model", "batch", *[f"{e} img/s (× torch)" for e in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ips = r["images_per_s"]
        base = ips[BASELINE]
        cells = [r["model"], str(r["batch"])]
        cells += [f"{ips[e]:.1f} ({ips[e] / base:.2f}×)" if e in ips else "–" for e in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def guard_table(rows: list[dict]) -> str:
    """The accuracy guard's figures of every variant the export kept, per model."""
    head = ["model", "variant", "min cosine", "min attention cosine", "k-NN top-1 fp32 → variant"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["model"] for r in rows):
        r = next(r for r in rows if r["model"] == name)
        for v, g in r["guard"].items():
            knn = (
                f"{g['knn_top1_fp32']:.2f} → {g['knn_top1']:.2f} % ({g['knn_queries']} queries)"
                if g.get("knn_top1") is not None
                else "–"
            )
            lines.append(
                f"| {name} | {v} | {g['min_cosine']:.4f} | {g['min_attention_cosine']:.4f} "
                f"| {knn} |"
            )
    return "\n".join(lines)


def roofline_table(rows: list[dict]) -> str:
    """Per model: FLOPs, fp32 and int8 GEMM rates at the MLP shape of the largest batch, and
    how close the best int8 engine gets to its runtime's int8 GEMM (achieved GOP/s = GFLOP per
    image × img/s)."""
    head = [
        "model",
        "GFLOP / image",
        "GEMM m·k·n",
        "ORT fp32 MatMul GFLOP/s",
        "int8 GEMM GOP/s",
        "best engine (largest batch)",
        "achieved GOP/s",
        "% of its int8 GEMM",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["model"] for r in rows):
        last = [r for r in rows if r["model"] == name][-1]
        roof, ips = last["roofline"], last["images_per_s"]
        best = max((e for e in ips if e != BASELINE), key=ips.get)
        achieved = roof["gflop_per_image"] * ips[best]
        peaks = roof["int8_gemm_gop_s"]
        peak = peaks.get("OpenVINO int8 MatMul (QDQ)") if best.startswith("OpenVINO") else None
        peak = peak or max(v for k, v in peaks.items() if k.startswith("ORT"))  # its best kernel
        cells = [
            name,
            f"{roof['gflop_per_image']:.3f}",
            "·".join(map(str, roof["gemm_shape"])),
            f"{roof['gemm_gflop_s']['ORT MatMul']:.0f}",
            ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()),
            f"{best} {ips[best]:.1f} img/s",
            f"{achieved:.0f}",
            f"{100 * achieved / peak:.0f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vits16,tiny,demo")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell, all rounds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--calibration",
        default=str(CIFAR) if CIFAR.is_file() else None,
        help="labelled real images (folder or tar) for static int8 and the guard; default "
        "../shared/data/cifar10-train.tar.gz when present (without: no static variants)",
    )
    ap.add_argument("--guard-images", type=int, default=512)
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
    print(guard_table(rows))
    print()
    print(roofline_table(rows))
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "openvino": __import__("openvino").__version__ if openvino_installed() else None,
        "command": shlex.join([".venv/bin/python", "-m", "bench.embed_throughput", *sys.argv[1:]]),
        "rows": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
