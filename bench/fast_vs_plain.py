"""Correctness guard of the fast training path: same data, same seed, fast vs plain path.

    python bench/fast_vs_plain.py --data cifar10-train.tar.gz [--steps 200] [--out DIR]
    python bench/fast_vs_plain.py --smoke     # CPU, synthetic shapes, a few steps

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import load_config  # noqa: E402
from training.synthetic import make_synthetic  # noqa: E402
from training.train import Trainer  # noqa: E402

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
        "knn_end": result.knn_end,
        "wall_s": round(time.perf_counter() - t0, 1),
        "img_per_s": round(result.images_per_s, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder or tar.gz (class folders)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "vit_cifar10.yaml"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="runs/fast-vs-plain")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
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
