"""Training configuration: small dataclasses loaded from a YAML preset plus `key=value` overrides.

The resolved config is written into every run directory so a run can be reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A preset or an override names an unknown key or holds a value of the wrong type."""


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16_224"  # any timm ViT name
    patch_size: int = 16
    img_size: int = 224  # global crop size; local crops go through the same model
    drop_path_rate: float = 0.1
    # Extra timm kwargs, e.g. {embed_dim: 96, depth: 4, num_heads: 3} for a tiny model.
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConfig:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True


@dataclass
class CropConfig:
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_number: int = 10
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    # Images are decoded and resized to this square before cropping; their aspect ratio is kept
    # aside so crops come out undistorted. 0 means global_size × 8/7.
    load_size: int = 0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of the crop, as the reference
    solarize_p: float = 0.2  # global 2 only
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    train: str = ""  # folder or tar/tar.gz of images (sub-folders are ignored for training)
    knn_train: str = ""  # labelled memory for the k-NN eval (class folders); empty = no eval
    knn_val: str = ""  # labelled queries for the k-NN eval
    # Hold out the last N images of each class (needs class folders): they are left out of
    # training and become the k-NN queries, the rest of the labelled images the k-NN memory.
    holdout_per_class: int = 0
    batch_size: int = 64  # per process
    num_workers: int = 4
    # Where JPEGs are decoded: "device" = workers only read files and the batch is decoded on
    # the training device (nvJPEG on CUDA); "cpu" = workers decode; "auto" = device on CUDA.
    decode: str = "auto"
    cache_dir: str = "var/cache"  # where compressed tars are unpacked once


@dataclass
class OptimConfig:
    epochs: int = 100
    base_lr: float = 0.0005  # scaled by global_batch / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    final_teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    centering: str = "center"  # "center" (DINO) or "sinkhorn" (DINOv2)
    sinkhorn_iters: int = 3
    koleo_weight: float = 0.0  # DINOv2 KoLeo regulariser on the student's global CLS


@dataclass
class EvalConfig:
    every_epochs: int = 10
    k: int = 20
    temperature: float = 0.07
    crop_pct: float = 0.875  # resize shorter side to img_size / crop_pct, then centre crop
    batch_size: int = 256
    at_start: bool = True  # also evaluate the untrained model, for the before/after figure


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    # Where multi-crop runs: "auto" = the training device; "cpu" = the plain path (crops made on
    # the CPU, then copied), kept as the baseline of bench/train_throughput.py.
    augment_device: str = "auto"
    save_every_epochs: int = 10
    save_every_steps: int = 0  # 0 = only at epoch boundaries and the end
    max_steps: int = 0  # stop early (the schedules still span the whole run); 0 = no limit
    log_every_steps: int = 20
    tensorboard: bool = True
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the resolved config, for provenance."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def validate(self) -> None:
        if self.crops.global_size % self.model.patch_size or (
            self.crops.local_number and self.crops.local_size % self.model.patch_size
        ):
            raise ConfigError("crop sizes must be multiples of model.patch_size")
        if self.data.decode not in ("auto", "cpu", "device"):
            raise ConfigError("data.decode must be auto, cpu or device")
        if self.loss.centering not in ("center", "sinkhorn"):
            raise ConfigError("loss.centering must be 'center' or 'sinkhorn'")
        if self.run.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("run.precision must be auto, bf16 or fp32")
        if self.run.augment_device not in ("auto", "cpu"):
            raise ConfigError("run.augment_device must be auto or cpu")
        if self.run.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("run.device must be auto, cpu or cuda")
        if self.optim.epochs < 1 or self.data.batch_size < 1:
            raise ConfigError("optim.epochs and data.batch_size must be positive")
        if not 0 < self.eval.crop_pct <= 1:
            raise ConfigError("eval.crop_pct must be in (0, 1]")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the type a field declares."""
    origin = getattr(hint, "__origin__", None)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
        if origin is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            args = hint.__args__
            items = list(value)
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values")
            return tuple(_coerce(v, a, key) for v, a in zip(items, args, strict=True))
        if origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {value!r} as {hint}: {exc}") from exc
    return value


def _apply(section: Any, values: dict[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(section))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise ConfigError(f"unknown config key: {key}")
        current = getattr(section, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping")
            _apply(current, value, f"{key}.")
        else:
            setattr(section, name, _coerce(value, hints[name], key))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a config from defaults, then a YAML preset, then `a.b=value` overrides.

    Args:
        path: YAML preset (see configs/); None keeps the reference defaults.
        overrides: strings like `optim.epochs=5` or `crops.global_scale=[0.3,1]`.
    """
    cfg = TrainConfig()
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _apply(cfg, data, "")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else raw
        _apply(cfg, nested, "")
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (tuples become lists, which load back the same)."""
    data = json.loads(json.dumps(cfg.to_dict()))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
