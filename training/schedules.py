"""Per-iteration schedules built once as arrays: lr, weight decay, teacher momentum, temperature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.config import TrainConfig


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from `warmup_start` to `base`, then a half cosine from `base` to `final`.

    Returns an array of `total_iters` values; index i is the value used at iteration i.
    """
    warmup_iters = min(warmup_iters, total_iters)
    warmup = np.linspace(warmup_start, base, warmup_iters, endpoint=False)
    steps = np.arange(total_iters - warmup_iters)
    span = max(len(steps) - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / span))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def teacher_temp_schedule(
    warmup_temp: float, final_temp: float, warmup_iters: int, total_iters: int
) -> np.ndarray:
    """Linear warm-up of the teacher temperature, then constant (DINO §3, avoids early collapse)."""
    warmup_iters = min(warmup_iters, total_iters)
    ramp = np.linspace(warmup_temp, final_temp, warmup_iters)
    return np.concatenate([ramp, np.full(total_iters - warmup_iters, final_temp)])


@dataclass
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    freeze_last_layer_iters: int

    @property
    def total_iters(self) -> int:
        return len(self.lr)


def build_schedules(cfg: TrainConfig, iters_per_epoch: int, world_size: int = 1) -> Schedules:
    """All schedules of a run, per iteration, from the config (lr scaled by global batch / 256)."""
    total = cfg.optim.epochs * iters_per_epoch
    global_batch = cfg.data.batch_size * world_size
    lr = cfg.optim.base_lr * global_batch / 256.0
    return Schedules(
        lr=cosine_schedule(lr, cfg.optim.min_lr, total, cfg.optim.warmup_epochs * iters_per_epoch),
        weight_decay=cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
        momentum=cosine_schedule(cfg.loss.momentum_teacher, 1.0, total),
        teacher_temp=teacher_temp_schedule(
            cfg.loss.warmup_teacher_temp,
            cfg.loss.final_teacher_temp,
            cfg.loss.warmup_teacher_temp_epochs * iters_per_epoch,
            total,
        ),
        freeze_last_layer_iters=cfg.optim.freeze_last_layer_epochs * iters_per_epoch,
    )
