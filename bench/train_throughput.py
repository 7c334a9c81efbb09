"""DINO training throughput: the fast path vs the plain path, in one run on one device.

    python -m bench.train_throughput [--images 4096] [--batches 64,128] [--steps 30] [--out DIR]
                                     [--budget-s S]
    python -m bench.train_throughput --smoke      # CPU, tiny model: checks the script runs

Generates a folder of 500×375 synthetic JPEG photos, then measures per configuration img/s,
step ms, peak device memory and MFU (FLOPs of one step counted by torch's FlopCounterMode,
over the step time and `--peak-tflops`; counted once per batch on the uncompiled plain trainer,
since both paths run the same network):
- fast, end to end: JPEGs read by workers, decoded on the device, multi-crop on the device,
  bf16, torch.compile (the default on CUDA);
- fast, device only: the same step on decoded images already on the device (no loader), with
  the same (compiled) trainer as the end-to-end row;
- plain (baseline): workers decode, multi-crop on the CPU, fp32, no compile.
Recipe (issue 9): ViT-S/16, 2 × 224 + 10 × 96 crops, K = 65536, AdamW. `--budget-s` starts no
configuration after that many seconds, and report.json is rewritten after each one, so a run
cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.train_knn_cpu import cpu_model
from training.config import TrainConfig, load_config
from training.device_decode import decode_batch
from training.synthetic import draw_shape
from training.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _photo(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    img = draw_shape(int(rng.integers(10)), rng, 375).resize((500, 375), Image.Resampling.BICUBIC)
    img.save(path, quality=90)


def make_photos(folder: Path, n: int) -> Path:
    """n synthetic 500×375 JPEGs (skipped when the folder already has them)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= n:
        return folder
    with ProcessPoolExecutor() as pool:
        list(pool.map(_photo, [(folder / f"{i:06d}.jpg", i) for i in range(n)], chunksize=64))
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(
    trainer: Trainer, images: torch.Tensor, aspect: torch.Tensor, sizes: torch.Tensor | None = None
) -> float:
    """FLOPs of one training step (teacher forward, student forward + backward).

    Counted on an uncompiled trainer: compiled graphs run inductor kernels that the counter's
    dispatch mode does not see. The count depends only on the recipe and the batch, so one
    count serves every path of that batch.
    """
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(images, aspect, sizes)
    return float(counter.get_total_flops())


class _Batches:
    """Batches of a trainer's loader, decoded where the trainer decodes; restarts at the end."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.it = trainer, iter(trainer.loader)

    def __call__(self):
        t = self.trainer
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(t.loader)
            batch = next(self.it)
        if t.device_decode:
            return decode_batch(batch, t.load_size, t.device, t.max_side)
        return batch


def _timed(trainer: Trainer, steps: int, step_fn) -> float:
    dev = trainer.device
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(dev)
    return time.perf_counter() - t0


def measure(cfg: TrainConfig, run_dir: Path, steps: int, warmup: int, modes: list[str]) -> dict:
    """img/s, step ms and peak memory of one trainer, per mode: "end-to-end" (batches from the
    loader) and/or "device-only" (one batch already on the device, stepped again and again).
    The modes share the trainer, so a compiled model is compiled once."""
    trainer = Trainer(cfg, run_dir)
    dev = trainer.device
    batches = _Batches(trainer)
    first = batches()
    images, aspect, sizes = first.images.to(dev), first.aspect, first.sizes
    for _ in range(warmup):  # compile, autotune, allocator warm-up
        trainer.train_step(images, aspect, sizes)
    out = {}
    for mode in modes:
        if mode == "device-only":
            elapsed = _timed(trainer, steps, lambda: trainer.train_step(images, aspect, sizes))
        else:

            def step() -> None:
                b = batches()
                trainer.train_step(b.images, b.aspect, b.sizes)

            elapsed = _timed(trainer, steps, step)
        out[mode] = {
            "img_per_s": round(cfg.data.batch_size * steps / elapsed, 1),
            "step_ms": round(elapsed / steps * 1000, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            if dev.type == "cuda"
            else None,
        }
    out["flops"] = None if cfg.run.compile else step_flops(trainer, images, aspect, sizes)
    return out


def configs(args: argparse.Namespace, data: Path, batch: int) -> dict[str, list[str]]:
    common = [
        f"data.train={data}",
        f"data.batch_size={batch}",
        f"data.num_workers={args.workers}",
        "run.tensorboard=false",
        "eval.at_start=false",
        "optim.epochs=100",
    ]
    if args.smoke:
        common += [
            "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
            "head.out_dim=256",
            "head.hidden_dim=64",
            "head.bottleneck_dim=32",
            "crops.global_size=64",
            "crops.local_size=32",
            "crops.local_number=2",
            "model.patch_size=16",
            "model.img_size=64",
        ]
    fast = [
        *common,
        "data.decode=auto",
        "run.precision=auto",
        f"run.compile={'false' if args.smoke else 'true'}",
    ]
    plain = [
        *common,
        "data.decode=cpu",
        "run.augment_device=cpu",
        "run.precision=fp32",
        "run.compile=false",
    ]
    return {"plain": plain, "fast": fast}


MODES = {"plain": ["end-to-end"], "fast": ["end-to-end", "device-only"]}
NAMES = {
    ("plain", "end-to-end"): "plain (baseline)",
    ("fast", "end-to-end"): "fast end-to-end",
    ("fast", "device-only"): "fast device-only",
}


def _write(out: Path, argv: list[str] | None, rows: list[dict], skipped: list[str]) -> dict:
    """report.json with ratios to the plain path of the same batch (rewritten after every row,
    so a run cut short keeps what it measured)."""
    for row in rows:
        base = next(
            (r for r in rows if r["batch"] == row["batch"] and "plain" in r["config"]), None
        )
        row["vs_plain"] = round(row["img_per_s"] / base["img_per_s"], 2) if base else None
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "torch": torch.__version__,
        "command": "python -m bench.train_throughput " + shlex.join(argv or sys.argv[1:]),
        "rows": rows,
        "skipped": skipped,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--peak-tflops", type=float, default=794.0, help="bf16 peak measured (H100)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "vit_small16_imagenet.yaml"))
    ap.add_argument("--out", default="runs/bench-train")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="start no new configuration after this many seconds (0: no limit)",
    )
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, few steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.batches, args.steps, args.warmup, args.workers = 64, "8", 2, 1, 0
    t_start = time.perf_counter()
    out = Path(args.out)
    data = make_photos(out / "photos", args.images)
    rows: list[dict] = []
    skipped: list[str] = []
    for batch in [int(b) for b in args.batches.split(",")]:
        flops = None
        for path, overrides in configs(args, data, batch).items():  # plain first: it counts
            if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                skipped.append(f"{path} batch {batch}")
                continue
            cfg = load_config(args.config, overrides)
            r = measure(cfg, out / "run", args.steps, args.warmup, MODES[path])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the measured trainer is gone: free its cache
            flops = flops or r.pop("flops")
            for mode in MODES[path]:
                step_s = r[mode]["step_ms"] / 1000
                mfu = float(f"{flops / step_s / (args.peak_tflops * 1e12):.3g}") if flops else None
                rows.append(
                    {
                        "config": NAMES[path, mode],
                        "batch": batch,
                        **r[mode],
                        "gflops_per_step": round(flops / 1e9, 1) if flops else None,
                        "mfu": mfu,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            _write(out, argv, rows, skipped)
    report = _write(out, argv, rows, skipped)
    print("| config | batch | img/s | step ms | peak GiB | MFU | × plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(
            f"| {r['config']} | {r['batch']} | {r['img_per_s']} | {r['step_ms']} | "
            f"{r['peak_mem_gib']} | {mfu} | {r['vs_plain']} |"
        )
    if skipped:
        print(f"skipped (over --budget-s {args.budget_s:g}): {', '.join(skipped)}")
    return report


if __name__ == "__main__":
    main()
