"""Issue 15's training run on the lent GPU: the CIFAR-10 preset, fitted to a time budget, with
the teacher backbone copied to $OUT (fp16) as it trains, so a run cut short still returns a model.

    python -m bench.device.gpu_train cifar --data .data/cifar10-train.tar.gz --run DIR --out $OUT \
        --budget-s 330 [--epochs N] [key=value ...]
    python -m bench.device.gpu_train fake-cifar .data/fake-cifar10.tar.gz --per-class 30

`cifar` first times a few steps of the recipe end to end (a throwaway trainer, compiled as the
real one), then trains for as many epochs as fit in what is left of the budget, the schedules
(warm-up, teacher temperature) scaled to that length. A watcher process turns every new
`last.pt` into `<out>/cifar_backbone.json` + `cifar_backbone-s<step>-<i>.pt` (fp16 teacher
backbone, in parts of at most 15 MiB: the device returns files of at most 16 MiB). Imports only
what the device image has (torch, timm, numpy, pillow, pyyaml, tqdm, matplotlib).
`fake-cifar` writes a tar.gz laid out as the real one (train/<class>/<nnnn>.jpg, 32 px), from
synthetic shapes, for the rehearsal on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from training import checkpoint
from training.config import TrainConfig, load_config
from training.synthetic import CLASSES, draw_shape
from training.train import LAST, Trainer, build_data

ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("gpu_train")
STEM = "cifar_backbone"
PART_BYTES = 15 * 2**20
STARTED = ".started.json"  # written into the run dir when the real training starts
STOP = ".stop"  # tells the watcher to do a last pass and exit
# The shipped backbone must come back in files of ≤ 16 MiB and ship in ≤ 25 MB, so the device
# run trains ViT-Ti/4 (5.5 M parameters, 11 MB in fp16) with the reference's 2 × 32 + 8 × 16
# crops at batch 512; the preset's ViT-S/4 would be 43 MB in fp16. Later overrides win.
RECIPE = ["model.arch=vit_tiny_patch16_224", "crops.local_number=8", "data.batch_size=512"]


# -- snapshots -------------------------------------------------------------------------------
def backbone_fp16(teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's backbone weights in fp16 (bf16 for a tensor that fp16 cannot hold)."""
    out = {}
    for key, value in teacher.items():
        if not key.startswith("backbone."):
            continue
        half = value.detach().to(torch.float16)
        if not torch.isfinite(half).all():
            half = value.detach().to(torch.bfloat16)
        out[key.removeprefix("backbone.")] = half.contiguous()
    return out


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_snapshot(run_dir: Path, out: Path, stem: str = STEM) -> dict | None:
    """Copy the fp16 teacher backbone of run_dir/last.pt (and what ship_backbone needs) to out.

    Parts are named by step and written before the JSON that lists them; parts of older steps
    are removed after it, so the JSON always names complete files.
    """
    if not (run_dir / LAST).exists():
        return None
    ckpt = checkpoint.load(run_dir / LAST)
    weights = backbone_fp16(ckpt["teacher"])
    step = int(ckpt["step"])
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in weights.items():
        nbytes = value.numel() * value.element_size()
        if parts[-1] and size + nbytes > PART_BYTES:
            parts.append({})
            size = 0
        parts[-1][key] = value
        size += nbytes
    names = [f"{stem}-s{step}-{i}.pt" for i in range(len(parts))]
    for name, part in zip(names, parts, strict=True):
        _atomic_save({"step": step, "weights": part}, out / name)
    started = json.loads((run_dir / STARTED).read_text()) if (run_dir / STARTED).exists() else {}
    metrics = run_dir / "metrics.jsonl"
    meta = {
        "step": step,
        "parts": names,
        "config_yaml": (run_dir / "config.yaml").read_text(),
        "saved_at_s": round((run_dir / LAST).stat().st_mtime - started.get("time", 0.0), 1)
        if started
        else None,
        "epochs_done": [json.loads(line) for line in metrics.read_text().splitlines()]
        if metrics.exists()
        else [],
        **started,
    }
    summary = run_dir / "summary.json"
    if summary.exists():
        meta["summary"] = json.loads(summary.read_text())
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / f"{stem}.json")
    for old in out.glob(f"{stem}-s*-*.pt"):
        if old.name not in names:
            old.unlink(missing_ok=True)
    return meta


def watch(run_dir: Path, out: Path, poll_s: float) -> None:
    """Snapshot every new last.pt until run_dir/.stop appears (or the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when the watch ends
    parent, seen = os.getppid(), 0.0
    while not (run_dir / STOP).exists() and os.getppid() == parent:
        try:
            mtime = (run_dir / LAST).stat().st_mtime
        except FileNotFoundError:
            mtime = seen
        if mtime > seen:
            try:
                meta = write_snapshot(run_dir, out)
                seen = mtime
                log.info("snapshot of step %s in %s", meta and meta["step"], out)
            except (OSError, RuntimeError, EOFError) as exc:  # a save in progress: next poll
                log.warning("snapshot failed, retrying: %s", exc)
        time.sleep(poll_s)


# -- fitting the run to the budget -----------------------------------------------------------
def calibrate(cfg: TrainConfig, run_dir: Path, warmup: int, max_steps: int, max_s: float) -> dict:
    """Steps per second of the recipe end to end (loader included), after `warmup` steps that
    compile and warm the allocator; the throwaway trainer's weights are discarded."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    it = iter(trainer.loader)
    n_timed, t_warm = 0, 0.0
    for i in range(warmup + max_steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(trainer.loader)
            batch = next(it)
        if trainer.device_decode:
            from training.device_decode import decode_batch

            batch = decode_batch(batch, trainer.load_size, trainer.device)
        trainer.train_step(batch.images, batch.aspect)
        if i == warmup - 1 or (warmup == 0 and i == 0):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            t_warm = time.perf_counter()
        elif i >= warmup:
            n_timed += 1
            if time.perf_counter() - t_warm > max_s:
                break
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t_warm
    steps_per_s = n_timed / max(elapsed, 1e-9)
    del trainer, it
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "setup_and_warmup_s": round(t_warm - t0, 1),
        "timed_steps": n_timed,
        "steps_per_s": round(steps_per_s, 3),
        "img_per_s": round(steps_per_s * cfg.data.batch_size, 1),
    }


def fit_epochs(budget_s: float, cal: dict, n_train: int, n_eval: int, batch: int, cap: int) -> int:
    """Epochs that fit in budget_s: the real trainer's setup (about the calibration's, less
    with the compile cache warm), one k-NN evaluation at the end (forward passes only, about 3
    images per training image's time) and a margin of 10 %."""
    iters_per_epoch = n_train // batch
    epoch_s = iters_per_epoch / max(cal["steps_per_s"], 1e-9)
    eval_s = n_eval / max(cal["img_per_s"] * 3, 1e-9)
    left = 0.9 * (budget_s - cal["setup_and_warmup_s"] - eval_s)
    return max(1, min(cap, int(left // epoch_s)))


def scaled(cfg: TrainConfig, epochs: int) -> list[str]:
    """Overrides that keep the preset's schedule proportions over `epochs` epochs."""
    frac = epochs / cfg.optim.epochs
    return [
        f"optim.epochs={epochs}",
        f"optim.warmup_epochs={max(1, round(cfg.optim.warmup_epochs * frac))}"
        if cfg.optim.warmup_epochs
        else "optim.warmup_epochs=0",
        f"loss.warmup_teacher_temp_epochs={round(cfg.loss.warmup_teacher_temp_epochs * frac)}",
        f"eval.every_epochs={epochs}",  # one k-NN evaluation, at the end
        "eval.at_start=false",  # the random-init figure is measured back home
        "run.save_every_epochs=0",  # last.pt every epoch, no extra copies
    ]


def run_cifar(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    out, run_dir = Path(args.out), Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    base = [
        f"data.train={args.data}",
        f"data.cache_dir={args.cache}",
        "run.tensorboard=false",
        *RECIPE,
        *args.overrides,
    ]
    cfg = load_config(args.config, base)
    images, evaluator = build_data(cfg)  # unpacks the tar once into the cache
    n_train = len(images.files)
    n_eval = len(evaluator.train) + len(evaluator.val) if evaluator else 0
    log.info("%d training images, %d for the k-NN evaluation", n_train, n_eval)
    cal = None
    epochs = args.epochs
    if not epochs:
        left = args.budget_s - (time.perf_counter() - t_start)
        cal = calibrate(
            cfg,
            run_dir.with_name(run_dir.name + "-calibration"),
            args.cal_warmup,
            args.cal_steps,
            min(20.0, 0.1 * left),
        )
        left = args.budget_s - (time.perf_counter() - t_start)
        epochs = fit_epochs(left, cal, n_train, n_eval, cfg.data.batch_size, cfg.optim.epochs)
        log.info("calibration %s: %d epochs fit in %.0f s", cal, epochs, left)
    overrides = [*base, *scaled(cfg, epochs)]
    if cal:  # a checkpoint (so a snapshot) about every minute even when epochs are long
        steps_per_min = max(1, int(cal["steps_per_s"] * 60))
        if steps_per_min < n_train // cfg.data.batch_size:
            overrides.append(f"run.save_every_steps={steps_per_min}")
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, run_dir)
    device = torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu"
    started = {
        "time": time.time(),
        "device": device,
        "torch": torch.__version__,
        "epochs_planned": epochs,
        "n_train": n_train,
        "calibration": cal,
        "overrides": overrides,
        "budget_s": args.budget_s,
    }
    (run_dir / STARTED).write_text(json.dumps(started) + "\n")
    (run_dir / STOP).unlink(missing_ok=True)
    watcher = subprocess.Popen(
        [sys.executable, __file__, "watch", "--run", str(run_dir), "--out", str(out)]
    )
    result = None
    try:
        result = trainer.fit()
    except KeyboardInterrupt:  # the time box ran out: fit saved last.pt at the step it reached
        log.warning("stopped by the time box at step %d", trainer.step)
    finally:
        (run_dir / STOP).touch()
        try:
            watcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()
        meta = write_snapshot(run_dir, out)
        for name in ("metrics.jsonl", "summary.json"):
            if (run_dir / name).exists():
                (out / f"cifar_{name}").write_bytes((run_dir / name).read_bytes())
    report = {
        "epochs_planned": epochs,
        "step": meta and meta["step"],
        "calibration": cal,
        "knn_end": result and result.knn_end,
        "wall_s": result and round(result.wall_s, 1),
        "images_per_s": result and round(result.images_per_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(report), flush=True)
    return report


# -- rehearsal data --------------------------------------------------------------------------
def fake_cifar(path: Path, per_class: int, seed: int = 0) -> Path:
    """A tar.gz laid out as cifar10-train.tar.gz (train/<class>/<nnnn>.jpg, 32 px JPEGs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        for c, name in enumerate(CLASSES):
            (root / name).mkdir(parents=True)
            for i in range(per_class):
                draw_shape(c, rng, 32).save(root / name / f"{i:04d}.jpg", quality=90)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(root, arcname="train")
    return path


def main(argv: list[str] | None = None) -> dict | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cifar", help="train the CIFAR-10 preset within a time budget")
    c.add_argument("--data", required=True, help="cifar10-train.tar.gz (or a folder)")
    c.add_argument("--run", required=True, help="run directory (local disk)")
    c.add_argument("--out", required=True, help="where snapshots go ($OUT)")
    c.add_argument("--config", default=str(ROOT / "configs" / "vit_cifar10.yaml"))
    c.add_argument("--cache", default="/tmp/dinoserve-cache", help="where the tar is unpacked")
    c.add_argument("--budget-s", type=float, default=330.0, help="for calibration + training")
    c.add_argument("--epochs", type=int, default=0, help="fixed epochs (0: fit to the budget)")
    c.add_argument("--cal-warmup", type=int, default=5)
    c.add_argument("--cal-steps", type=int, default=40)
    c.add_argument("overrides", nargs="*", help="config overrides after the recipe's")
    w = sub.add_parser("watch", help="(internal) snapshot each new last.pt")
    w.add_argument("--run", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--poll-s", type=float, default=5.0)
    f = sub.add_parser("fake-cifar", help="a small synthetic stand-in for the CIFAR tar")
    f.add_argument("path")
    f.add_argument("--per-class", type=int, default=30)
    args = ap.parse_args(argv)
    if args.cmd == "cifar":
        return run_cifar(args)
    if args.cmd == "watch":
        watch(Path(args.run), Path(args.out), args.poll_s)
    else:
        print(fake_cifar(Path(args.path), args.per_class))
    return None


if __name__ == "__main__":
    main()
