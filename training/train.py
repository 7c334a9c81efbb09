"""The training loop: wires data, augmentation, the DINO meta-architecture, schedules, metrics
and checkpoints together. Every step's randomness is a function of (seed, step, rank), so a
resumed run continues exactly where the uninterrupted one would have been."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import checkpoint
from training.augment import MultiCropAugment
from training.config import TrainConfig, save_config
from training.data import (
    ImageList,
    ResumableSampler,
    TrainImages,
    collate,
    list_images,
    resolve_source,
    split_holdout,
)
from training.device_decode import EncodedImages, collate_encoded, decode_batch
from training.distributed import DistInfo, init_distributed, shutdown
from training.init import init_state
from training.knn import KnnEvaluator
from training.meta_arch import DINO
from training.metrics import MetricsLog, TrainingDiverged, plot_curves
from training.schedules import Schedules, build_schedules

log = logging.getLogger(__name__)
LAST = "last.pt"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    knn_start: float | None
    knn_end: float | None
    wall_s: float
    images_per_s: float
    failed_images: int
    losses: list[float]  # loss of every step run in this process (for tests and the guard)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


AUGMENT, MODEL = 0, 1  # random streams of a step: crops and photometry; drop path


def step_seed(seed: int, step: int, rank: int, stream: int = AUGMENT) -> int:
    """The seed of one random stream of one step on one rank.

    Mixed through a SeedSequence so the streams are unrelated: seeding the drop-path RNG and the
    augmentation generator with one number would draw the same uniforms for both on the CPU.
    """
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) % (2**63)


def build_data(cfg: TrainConfig) -> tuple[ImageList, KnnEvaluator | None]:
    """The training images and, when configured, the k-NN evaluator."""
    images = list_images(resolve_source(cfg.data.train, cfg.data.cache_dir))
    memory = queries = None
    if cfg.data.holdout_per_class > 0:
        images, queries = split_holdout(images, cfg.data.holdout_per_class)
        memory = images
    if cfg.data.knn_train:
        memory = list_images(resolve_source(cfg.data.knn_train, cfg.data.cache_dir))
    if cfg.data.knn_val:
        queries = list_images(resolve_source(cfg.data.knn_val, cfg.data.cache_dir))
    evaluator = None
    if memory is not None and queries is not None:
        evaluator = KnnEvaluator(
            memory, queries, cfg.model.img_size, cfg.crops.mean, cfg.crops.std, cfg.eval.crop_pct
        )
    return images, evaluator


class Trainer:
    """One training run in one process (torchrun starts one per GPU).

    Args:
        cfg: resolved configuration.
        run_dir: where config, checkpoints, metrics and curves go.
        resume: continue from run_dir/last.pt when it exists.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.device = pick_device(cfg.run.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.amp = autocast_dtype(cfg, self.device)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            save_config(cfg, run_dir / "config.yaml")

        images, self.evaluator = build_data(cfg)
        self.sampler = ResumableSampler(
            len(images.files),
            cfg.data.batch_size,
            cfg.run.seed,
            self.dist.rank,
            self.dist.world_size,
        )
        # load_size 0: full resolution (long side ≤ max_side); > 0: the legacy squashed square.
        self.load_size, self.max_side = cfg.crops.load_size, cfg.crops.max_side
        decode = cfg.data.decode
        self.device_decode = decode == "device" or (decode == "auto" and self.device.type == "cuda")
        self.loader = DataLoader(
            (EncodedImages if self.device_decode else TrainImages)(
                images, self.load_size, self.max_side
            ),
            batch_size=cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_encoded if self.device_decode else collate,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        self.iters_per_epoch = self.sampler.batches_per_epoch
        self.sched: Schedules = build_schedules(cfg, self.iters_per_epoch, self.dist.world_size)

        torch.manual_seed(cfg.run.seed)  # same initial weights on every process
        self.model = DINO(cfg)
        resuming = resume and (run_dir / LAST).exists()
        if cfg.model.init and not resuming:  # continued pretraining: backbones from weights
            self.model.load_backbones(init_state(cfg.model))
            log.info("backbones initialised from %s", cfg.model.init)
        self.model = self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(),
            lr=0.0,
            betas=cfg.optim.betas,
            fused=self.device.type == "cuda",
        )
        self.augment = MultiCropAugment(cfg.crops)
        self.step = 0
        if resume and (run_dir / LAST).exists():
            self._load(run_dir / LAST)
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.model.wrap_ddp(ids)
        if cfg.run.compile:
            self.model.compile_backbones()
        self.metrics = MetricsLog(
            run_dir, cfg.run.tensorboard and self.dist.is_main, cfg.head.out_dim
        )
        self.failed_images = 0
        # False once any step had a non-finite loss or gradient; checked before every save.
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "student": self.model.student.state_dict(),
            "teacher": self.model.teacher.state_dict(),
            "dino_loss": self.model.dino_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.cfg.to_dict(),
        }

    def save(self, extra_name: str | None = None) -> None:
        """Write last.pt (and a named copy); refuses to write weights a non-finite step touched."""
        # The one host sync of the NaN guard: a flag accumulated on the device every step.
        if not bool(self.finite):
            raise TrainingDiverged(
                f"a non-finite loss or gradient occurred before step {self.step}: training "
                "diverged. Lower optim.base_lr, raise optim.warmup_epochs or check the data; "
                "the last checkpoint is from before it."
            )
        if not self.dist.is_main:
            return
        path = self.run_dir / LAST
        checkpoint.save_atomic(self.state(), path)
        if extra_name:
            checkpoint.copy_atomic(path, self.run_dir / extra_name)

    def _load(self, path: Path) -> None:
        ckpt = checkpoint.load(path)
        self.model.student.load_state_dict(ckpt["student"])
        self.model.teacher.load_state_dict(ckpt["teacher"])
        self.model.dino_loss.load_state_dict(ckpt["dino_loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        log.info("resumed from %s at step %d", path, self.step)

    # -- one step ----------------------------------------------------------------------------
    def _set_hyperparams(self, it: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.sched.lr[it])
            if group.get("apply_wd"):
                group["weight_decay"] = float(self.sched.weight_decay[it])

    def train_step(
        self, images: torch.Tensor, aspect: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on a decoded batch (canvas, aspect ratios, sizes; see Batch)."""
        it, cfg = self.step, self.cfg
        self._set_hyperparams(it)
        torch.manual_seed(step_seed(cfg.run.seed, it, self.dist.rank, MODEL))  # drop path
        aug_dev = torch.device("cpu") if cfg.run.augment_device == "cpu" else self.device
        g = torch.Generator(device=aug_dev).manual_seed(step_seed(cfg.run.seed, it, self.dist.rank))
        crops = self.augment(images.to(aug_dev, non_blocking=True), aspect.to(aug_dev), g, sizes)
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model.forward_backward(crops, float(self.sched.teacher_temp[it]), self.amp)
        grads_finite = self.model.clip_gradients(cfg.optim.clip_grad)
        self.finite &= grads_finite & torch.isfinite(out["loss"])
        if it < self.sched.freeze_last_layer_iters:
            self.model.cancel_last_layer_grads()
        self.optimizer.step()
        self.model.update_teacher(float(self.sched.momentum[it]))
        self.step += 1
        return out

    def evaluate(self) -> float | None:
        """k-NN top-1 of the teacher; every rank extracts its share (see training/knn.py)."""
        if self.evaluator is None:
            return None
        e = self.cfg.eval
        return self.evaluator(
            self.model.teacher_backbone(),
            self.device,
            e.k,
            e.temperature,
            e.batch_size,
            self.cfg.data.num_workers,
            self.amp,
            e.max_seconds,
        )

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, ipe = self.cfg, self.iters_per_epoch
        total = self.sched.total_iters
        stop = min(total, cfg.run.max_steps) if cfg.run.max_steps else total
        knn_start = self.evaluate() if self.step == 0 and cfg.eval.at_start else None
        if knn_start is not None:
            log.info("k-NN top-1 at initialisation: %.2f%%", knn_start)
        knn_end, knn_step = knn_start, 0
        # Every step's loss in one preallocated device tensor: no per-step host sync, and not
        # one tensor object per step for the whole run.
        losses = torch.zeros(max(stop - self.step, 0), device=self.device)
        imgs_per_step = cfg.data.batch_size * self.dist.world_size
        bar = tqdm(
            total=stop * imgs_per_step,
            initial=self.step * imgs_per_step,
            unit="img",
            unit_scale=True,
            disable=not self.dist.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        t0, start_step = time.perf_counter(), self.step
        try:
            while self.step < stop:
                epoch, start_batch = divmod(self.step, ipe)
                self.sampler.set_epoch(epoch, start_batch)
                epoch_sums: dict[str, torch.Tensor] = {}
                window: dict[str, torch.Tensor] = {}
                n_epoch = n_window = 0
                for batch in self.loader:
                    if self.device_decode:
                        batch = decode_batch(batch, self.load_size, self.device, self.max_side)
                    out = self.train_step(batch.images, batch.aspect, batch.sizes)
                    self.failed_images += batch.failed
                    for k, v in out.items():  # sums stay on the device: no sync per step
                        epoch_sums[k] = epoch_sums.get(k, 0) + v
                        window[k] = window.get(k, 0) + v
                    n_epoch, n_window = n_epoch + 1, n_window + 1
                    bar.update(imgs_per_step)
                    if self.step % cfg.run.log_every_steps == 0 or self.step == stop:
                        values = {k: float(v) / n_window for k, v in window.items()}
                        self.metrics.check(values, self.step)
                        self.metrics.scalars(
                            {f"train/{k}": v for k, v in values.items()}
                            | {"train/lr": float(self.sched.lr[self.step - 1])},
                            self.step,
                        )
                        bar.set_postfix(loss=f"{values['loss']:.4f}", epoch=epoch)
                        window, n_window = {}, 0
                    losses[self.step - 1 - start_step] = out["loss"]
                    if cfg.run.save_every_steps and self.step % cfg.run.save_every_steps == 0:
                        self.save()
                    if self.step >= stop:
                        break
                epoch_done = self.step % ipe == 0
                values = {k: float(v) / max(n_epoch, 1) for k, v in epoch_sums.items()}
                self.metrics.check(values, self.step)
                last_epoch = epoch_done and self.step // ipe == cfg.optim.epochs
                knn = None
                if epoch_done and ((epoch + 1) % cfg.eval.every_epochs == 0 or last_epoch):
                    knn = self.evaluate()
                    knn_end, knn_step = knn, self.step
                if self.dist.is_main:
                    elapsed = time.perf_counter() - t0
                    self.metrics.epoch(
                        {
                            "epoch": epoch + (1 if epoch_done else 0),
                            "step": self.step,
                            **values,
                            "lr": float(self.sched.lr[self.step - 1]),
                            "weight_decay": float(self.sched.weight_decay[self.step - 1]),
                            "momentum": float(self.sched.momentum[self.step - 1]),
                            "teacher_temp": float(self.sched.teacher_temp[self.step - 1]),
                            "knn_top1": knn,
                            "failed_images": self.failed_images,
                            "images_per_s": (self.step - start_step) * imgs_per_step / elapsed,
                            "elapsed_s": elapsed,
                        }
                    )
                    if knn is not None:
                        log.info("epoch %d: k-NN top-1 %.2f%%", epoch + 1, knn)
                save_every = cfg.run.save_every_epochs
                if epoch_done and save_every and (self.step // ipe) % save_every == 0:
                    self.save(f"checkpoint-epoch{self.step // ipe:04d}.pt")
                else:
                    self.save()
            if self.evaluator is not None and knn_step != self.step and self.step > start_step:
                knn_end = self.evaluate()  # stopped between evaluations: measure where it ended
            if self.failed_images:
                log.warning("%d unreadable images were skipped", self.failed_images)
        except KeyboardInterrupt:
            self.save()
            log.warning("interrupted: saved %s at step %d; --resume continues", LAST, self.step)
            raise
        finally:
            bar.close()
            self.metrics.close()
        wall = time.perf_counter() - t0
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step - start_step,
            knn_start=knn_start,
            knn_end=knn_end,
            wall_s=wall,
            images_per_s=(self.step - start_step) * imgs_per_step / max(wall, 1e-9),
            failed_images=self.failed_images,
            losses=losses[: self.step - start_step].tolist(),
        )
        if self.dist.is_main:
            plot_curves(self.run_dir)
            segment = {k: v for k, v in vars(result).items() if k not in ("losses", "run_dir")}
            segment["device"] = (
                torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
            )
            segment["torch"] = torch.__version__
            path = self.run_dir / "summary.json"
            before = json.loads(path.read_text()) if start_step and path.is_file() else None
            summary = run_summary(before, segment, self.step, imgs_per_step)
            path.write_text(json.dumps(summary, indent=2) + "\n")
        return result


def run_summary(before: dict | None, segment: dict, step: int, imgs_per_step: int) -> dict:
    """summary.json of a whole run: this process's `segment` joined to the summary the run's
    earlier segments wrote (`before`, None for a run started here), so that a resumed run's
    steps, k-NN at initialisation, time and skipped images are the run's, not its last part's.
    Each segment's own figures stay under "segments" (one written by an older version, without
    them, counts as one segment)."""
    if before is None:
        segments = []
    elif "segments" in before:
        segments = list(before["segments"])
    else:
        segments = [dict(before)]
    segments.append(segment)
    # A segment stopped by Ctrl-C wrote no summary: its steps are in `step`, not in the time.
    wall = sum(float(s.get("wall_s") or 0.0) for s in segments)
    timed = sum(int(s.get("steps") or 0) for s in segments)
    return {
        "steps": step,
        "knn_start": segments[0].get("knn_start"),
        "knn_end": segment["knn_end"],
        "wall_s": wall,
        "images_per_s": timed * imgs_per_step / max(wall, 1e-9),
        "failed_images": sum(int(s.get("failed_images") or 0) for s in segments),
        "device": segment["device"],
        "torch": segment["torch"],
        "segments": segments,
    }


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False) -> TrainResult:
    """Run DINO training to the end (or run.max_steps) and return a summary.

    Args:
        cfg: resolved configuration (see training.config.load_config).
        run_dir: output directory.
        resume: continue from run_dir/last.pt if present.
    """
    trainer = Trainer(cfg, Path(run_dir), resume=resume)
    try:
        return trainer.fit()
    finally:
        shutdown()
