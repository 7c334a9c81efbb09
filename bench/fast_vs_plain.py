"""Correctness guards of the training data path: same data, same seed, two paths compared.

    python -m bench.fast_vs_plain --data cifar10-train.tar.gz [--steps 200] [--out DIR]
    python -m bench.fast_vs_plain --smoke     # CPU, synthetic shapes, a few steps
    python -m bench.fast_vs_plain --compare resolution [--per-class 200] [--out DIR]
    python -m bench.fast_vs_plain --compare resolution --smoke
    python -m bench.fast_vs_plain --compare resolution --config configs/vit_small16_imagenet.yaml \
        --per-class 400 --steps 300 data.holdout_per_class=40     # on a GPU

`--compare resolution` (issue 17): full-resolution crops (decoded at their own size, long side
≤ crops.max_side, antialiased resampling) against the squashed path (every image resized to one
load_size² square first, load_size = 8/7 × the global crop, the old default), on labelled
synthetic 500 × 375 photos made as bench/train_throughput.py makes them. Both train the same
preset (tiny on the CPU) for the same steps from the same seed; reports the k-NN top-1 of each
(held-out images), and the training throughput of each, timed in interleaved segments (median)
with the loader in the main process, so decoding is counted in full.

The default comparison (fast vs plain):
Trains the CIFAR-10 preset twice for `--steps` steps: the fast path (JPEG decode and multi-crop
on the device, bf16, torch.compile) and the plain path (workers decode, multi-crop on the CPU,
fp32, no compile). Reports both loss curves (smoothed over 20 steps), their largest smoothed
difference, and the k-NN top-1 of each at the end (held-out last 500 images per class). The two
paths draw different random crops (a device generator differs from a CPU one), so the curves
agree within noise, not exactly; the check is that neither path learns worse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.train_knn_cpu import cpu_model
from training.config import TrainConfig, load_config
from training.device_decode import decode_batch
from training.synthetic import CLASSES, draw_shape, make_synthetic
from training.train import Trainer

ROOT = Path(__file__).resolve().parents[1]

FAST = ["data.decode=auto", "run.augment_device=auto", "run.precision=auto", "run.compile=true"]
PLAIN = ["data.decode=cpu", "run.augment_device=cpu", "run.precision=fp32", "run.compile=false"]


def smooth(x: list[float], window: int = 20) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    w = min(window, len(a))
    return np.convolve(a, np.ones(w) / w, mode="valid")


def run(overrides: list[str], out: Path, config: str) -> dict:
    t0 = time.perf_counter()
    result = Trainer(load_config(config, overrides), out).fit()
    return {
        "losses": result.losses,
        "knn_start": result.knn_start,
        "knn_end": result.knn_end,
        "wall_s": round(time.perf_counter() - t0, 1),
        "img_per_s": round(result.images_per_s, 1),
    }


def make_labelled_photos(folder: Path, per_class: int, size: tuple[int, int] = (500, 375)) -> Path:
    """`folder/<class>/<n>.jpg`: synthetic shapes drawn at the photo's height, stretched to
    500 × 375 and saved as JPEG (quality 90), as bench/train_throughput.py's photos."""
    w, h = size
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = sub / f"{i:05d}.jpg"
            img = draw_shape(c, rng, h).resize((w, h), Image.Resampling.BICUBIC)
            if not path.exists():
                img.save(path, quality=90)
    return folder


def _batches(trainer: Trainer):
    """The trainer's batches, decoded, epoch after epoch."""
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch)
        for batch in trainer.loader:
            if trainer.device_decode:
                batch = decode_batch(batch, trainer.load_size, trainer.device, trainer.max_side)
            yield batch
        epoch += 1


def throughput(cfgs: dict[str, TrainConfig], out: Path, segments: int, steps: int) -> dict:
    """Training img/s of each config (loader + augmentation + step), interleaved A B A B …,
    median over segments, so a slow spell of a shared machine hits every config alike."""
    trainers = {name: Trainer(cfg, out / f"throughput-{name}") for name, cfg in cfgs.items()}
    feeds = {name: _batches(t) for name, t in trainers.items()}
    rates: dict[str, list[float]] = {name: [] for name in cfgs}
    for name, t in trainers.items():  # warm-up step
        b = next(feeds[name])
        t.train_step(b.images, b.aspect, b.sizes)
    for _ in range(segments):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                b = next(feeds[name])
                t.train_step(b.images, b.aspect, b.sizes)
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            rates[name].append(steps * t.cfg.data.batch_size / (time.perf_counter() - t0))
    return {name: round(float(np.median(r)), 1) for name, r in rates.items()}


def compare_resolution(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    per_class = 3 if args.smoke else args.per_class
    data = make_labelled_photos(out / "photos", per_class, (100, 75) if args.smoke else (500, 375))
    config = args.config or str(ROOT / "configs" / "tiny.yaml")
    base = load_config(config)
    squash = round(base.crops.global_size * 8 / 7)
    common = [f"data.train={data}", "run.tensorboard=false", f"data.cache_dir={out / 'cache'}"]
    if not torch.cuda.is_available():
        common += ["run.compile=false"]  # compiling takes minutes on a CPU
    if args.steps:
        common += [f"run.max_steps={args.steps}"]
    common += args.overrides
    if args.smoke:
        common += [
            "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
            "head.out_dim=64",
            "data.batch_size=8",
            "data.num_workers=0",
            "data.holdout_per_class=1",
            "optim.epochs=1",
            "eval.every_epochs=1",
        ]
    paths = {
        "full": [*common, "crops.load_size=0"],
        "squashed": [*common, f"crops.load_size={squash}"],
    }
    runs = {}
    for name, overrides in paths.items():
        r = run(overrides, out / name, config)
        runs[name] = {k: r[k] for k in ("knn_start", "knn_end", "wall_s", "img_per_s")}
        runs[name]["steps"] = len(r["losses"])
    seg, steps = (1, 1) if args.smoke else (args.segments, args.segment_steps)
    tp_cfgs = {n: load_config(config, [*o, "data.num_workers=0"]) for n, o in paths.items()}
    tp = throughput(tp_cfgs, out, seg, steps)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "command": "python -m bench.fast_vs_plain " + " ".join(args.argv),
        "config": config,
        "photos": f"{per_class} per class × {len(CLASSES)}",
        "max_side": base.crops.max_side,
        "squashed_load_size": squash,
        "runs": runs,
        "knn_gain_full_minus_squashed": (
            None
            if runs["full"]["knn_end"] is None or runs["squashed"]["knn_end"] is None
            else round(runs["full"]["knn_end"] - runs["squashed"]["knn_end"], 2)
        ),
        "train_img_per_s": tp,
        "throughput_full_over_squashed": round(tp["full"] / tp["squashed"], 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=("paths", "resolution"), default="paths")
    ap.add_argument("--data", default=None, help="CIFAR-10 folder or tar.gz (class folders)")
    ap.add_argument(
        "--config", default=None, help="default: vit_cifar10 (paths), tiny (resolution)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="200 (paths); the preset's (resolution)"
    )
    ap.add_argument("--per-class", type=int, default=200, help="photos per class (resolution)")
    ap.add_argument("--segments", type=int, default=5, help="throughput segments per path")
    ap.add_argument("--segment-steps", type=int, default=10)
    ap.add_argument("--out", default="runs/fast-vs-plain")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs (resolution)")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.compare == "resolution":
        return compare_resolution(args)
    args.steps = args.steps or 200
    args.config = args.config or str(ROOT / "configs" / "vit_cifar10.yaml")
    out = Path(args.out)
    common = [f"run.max_steps={args.steps}", "run.tensorboard=false", "eval.at_start=false"]
    if args.smoke:
        data = make_synthetic(out / "data", 12, 32, seed=0)
        args.config = str(ROOT / "configs" / "tiny.yaml")
        common += [
            "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
            "head.out_dim=64",
            "data.batch_size=16",
            "data.num_workers=0",
            "data.holdout_per_class=2",
        ]
        args.steps = min(args.steps, 6)
        common[0] = f"run.max_steps={args.steps}"
    else:
        if not args.data:
            ap.error("--data is required (or --smoke)")
        data = Path(args.data)
    common.append(f"data.train={data}")
    no_compile = ["run.compile=false"] if args.smoke else []  # compiling takes minutes on a CPU
    fast = run([*common, *FAST, *no_compile], out / "fast", args.config)
    plain = run([*common, *PLAIN], out / "plain", args.config)
    diff = np.abs(smooth(fast["losses"]) - smooth(plain["losses"]))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "steps": args.steps,
        "max_smoothed_loss_diff": round(float(diff.max()), 4),
        "final_loss": {"fast": fast["losses"][-1], "plain": plain["losses"][-1]},
        "knn_end": {"fast": fast["knn_end"], "plain": plain["knn_end"]},
        "img_per_s": {"fast": fast["img_per_s"], "plain": plain["img_per_s"]},
        "curves": {"fast": fast["losses"], "plain": plain["losses"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}))
    return report


if __name__ == "__main__":
    main()
