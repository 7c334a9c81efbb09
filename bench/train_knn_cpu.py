"""CPU check of the training core: the tiny preset, at most 3 minutes of training on synthetic
shapes, must raise held-out k-NN top-1 by ≥ 15 points over the same model at initialisation.

    .venv/bin/python -m bench.train_knn_cpu [--out runs/bench-knn] [--per-class 240]

Prints one JSON line (and writes it to OUT/bench.json): k-NN at init and at the end, the gain,
training wall time (evaluations included) and img/s, with the machine's CPU model.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

from training.config import load_config
from training.synthetic import make_synthetic
from training.train import train

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-knn")
    ap.add_argument("--data", default="var/bench/synthetic")
    ap.add_argument("--per-class", type=int, default=240)
    ap.add_argument("overrides", nargs="*", help="extra config overrides")
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        make_synthetic(data, args.per_class, 32, seed=0)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.train={data}", *args.overrides])
    t0 = time.perf_counter()
    result = train(cfg, out)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "preset": "configs/tiny.yaml",
        "overrides": args.overrides,
        "images_per_class": args.per_class,
        "knn_init": result.knn_start,
        "knn_end": result.knn_end,
        "gain_points": (result.knn_end or 0) - (result.knn_start or 0),
        "train_wall_s": round(result.wall_s, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "images_per_s": round(result.images_per_s, 1),
        "steps": result.steps,
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
