"""`dinoserve` — one command line for training, data and (later) export, index and serve."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.config import ConfigError

DEMO_DATA = Path("var/data/synthetic")


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.train import train

    run_dir = Path(args.out)
    overrides = list(args.overrides)
    if args.data:
        overrides.insert(0, f"data.train={args.data}")
    config = args.config
    if args.resume and (run_dir / "config.yaml").exists():
        config = run_dir / "config.yaml"  # the run's own resolved config; overrides still apply
    cfg = load_config(config, overrides)
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data or data.train=…")
    result = train(cfg, run_dir, resume=args.resume)
    _report(result)
    return 0


def _report(result) -> None:
    print(f"run: {result.run_dir}  steps: {result.steps}  {result.images_per_s:.0f} img/s")
    if result.knn_start is not None or result.knn_end is not None:
        print(f"k-NN top-1: start {result.knn_start}  end {result.knn_end}")


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import make_synthetic

    out = make_synthetic(args.out, args.per_class, args.size, args.seed, args.format)
    print(f"wrote {args.per_class} images × 10 classes to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Until the API lands: make synthetic data and train the tiny preset on it."""
    from training.config import load_config
    from training.synthetic import make_synthetic
    from training.train import train

    data = Path(args.data)
    if not data.exists():
        print(f"making synthetic demo images in {data} …")
        make_synthetic(data, 200, 32, seed=0)
    cfg = load_config(args.config, [f"data.train={data}"])
    result = train(cfg, Path(args.out))
    _report(result)
    print(f"curves: {Path(args.out) / 'curves.png'}  metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dinoserve", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain a DINO ViT (torchrun for several processes)")
    t.add_argument("--config", default=None, help="YAML preset from configs/ (default: paper)")
    t.add_argument("--data", default=None, help="folder or tar/tar.gz of images")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=5")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("synth", help="write synthetic labelled images (shapes)")
    s.add_argument("out")
    s.add_argument("--per-class", type=int, default=100)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("png", "jpg"), default="png")
    s.set_defaults(func=_cmd_synth)

    d = sub.add_parser("demo", help="the offline demo on synthetic images")
    d.add_argument("--config", default="configs/tiny.yaml")
    d.add_argument("--data", default=str(DEMO_DATA))
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"dinoserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
