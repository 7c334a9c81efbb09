"""Training configuration: pydantic models loaded from a YAML preset plus `key=value` overrides.

One configuration system with core/settings.py: typed fields, validated once when the config is
built, unknown keys refused with the nearest valid key named. The resolved config is written into
every run directory so a run can be reproduced exactly.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.package import EmbedViews

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A preset or an override names an unknown key or holds a value of the wrong type."""


# Names from the reference implementation's flags that this config spells differently: a user
# passing one gets an error that says which key does the job instead of a silent no-op.
RENAMED = {
    "loss.teacher_temp": "loss.final_teacher_temp (the teacher temperature after its warm-up "
    "from loss.warmup_teacher_temp over loss.warmup_teacher_temp_epochs)",
    "optim.lr": "optim.base_lr",
    "optim.batch_size_per_gpu": "data.batch_size",
    "data.batch_size_per_gpu": "data.batch_size",
    "crops.local_crops_number": "crops.local_number",
    "crops.global_crops_scale": "crops.global_scale",
    "crops.local_crops_scale": "crops.local_scale",
    "model.drop_path": "model.drop_path_rate",
}


class _Section(BaseModel):
    # Unknown keys are errors; assignments are validated too, so a config never holds a bad value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(_Section):
    arch: str = "vit_small_patch16_224"  # any timm ViT name
    patch_size: int = Field(16, ge=1)
    img_size: int = Field(224, ge=1)  # global crop size; local crops go through the same model
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    # Extra timm kwargs, e.g. {embed_dim: 96, depth: 4, num_heads: 3} for a tiny model.
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Start both backbones from these weights (`dinoserve train --init`): a package path or a
    # timm name with its tag (+ init_weights, a local file); empty = random initialisation.
    init: str = ""
    init_weights: str = ""


class HeadConfig(_Section):
    out_dim: int = Field(65536, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    nlayers: int = Field(3, ge=1)
    norm_last_layer: bool = True


class CropConfig(_Section):
    global_size: int = Field(224, ge=1)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_number: int = Field(10, ge=0)
    local_size: int = Field(96, ge=1)
    local_scale: tuple[float, float] = (0.05, 0.4)
    # 0 (the default): crops are cut from the image at full resolution, as the reference does;
    # images whose long side exceeds max_side are first shrunk to it (antialiased). > 0: the
    # legacy squashed path, every image resized to one load_size² square first (its aspect ratio
    # kept aside so crops come out undistorted) — cheaper to decode, blurrier views.
    load_size: int = Field(0, ge=0)
    max_side: int = Field(512, ge=0)  # 0 = no bound
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of the crop, as the reference
    solarize_p: float = Field(0.2, ge=0, le=1)  # global 2 only
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class DataConfig(_Section):
    train: str = ""  # folder or tar/tar.gz of images (sub-folders are ignored for training)
    knn_train: str = ""  # labelled memory for the k-NN eval (class folders); empty = no eval
    knn_val: str = ""  # labelled queries for the k-NN eval
    # Hold out the last N images of each class (needs class folders): they are left out of
    # training and become the k-NN queries, the rest of the labelled images the k-NN memory.
    holdout_per_class: int = Field(0, ge=0)
    batch_size: int = Field(64, ge=1)  # per process
    num_workers: int = Field(4, ge=0)
    # Where JPEGs are decoded: "device" = workers only read files and the batch is decoded on
    # the training device (nvJPEG on CUDA); "cpu" = workers decode; "auto" = device on CUDA.
    decode: Literal["auto", "cpu", "device"] = "auto"
    cache_dir: str = "var/cache"  # where compressed tars are unpacked once


class OptimConfig(_Section):
    epochs: int = Field(100, ge=1)
    base_lr: float = Field(0.0005, ge=0)  # scaled by global_batch / 256
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = Field(1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class LossConfig(_Section):
    student_temp: float = Field(0.1, gt=0)
    # The teacher temperature warms up linearly from warmup_teacher_temp to final_teacher_temp.
    warmup_teacher_temp: float = Field(0.04, gt=0)
    final_teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp_epochs: int = Field(30, ge=0)
    center_momentum: float = Field(0.9, ge=0, le=1)
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    centering: Literal["center", "sinkhorn"] = "center"  # DINO's EMA centre or DINOv2's SK
    sinkhorn_iters: int = Field(3, ge=1)
    koleo_weight: float = Field(0.0, ge=0)  # DINOv2 KoLeo regulariser on the student's global CLS


class EvalConfig(_Section):
    every_epochs: int = Field(10, ge=1)
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    crop_pct: float = Field(0.875, gt=0, le=1)  # resize shorter side to img_size / crop_pct
    batch_size: int = Field(256, ge=1)
    # Test-time views averaged into the exported package's embedding (core.package.EmbedViews);
    # the per-epoch k-NN above stays on the plain CLS, so the curves compare across runs.
    views: EmbedViews = Field(default_factory=EmbedViews)
    at_start: bool = True  # also evaluate the untrained model, for the before/after figure
    # Upper bound on one evaluation's wall time. Every rank extracts its slice of the labelled
    # images; a rank that reaches the bound stops extracting and the others are told so at the
    # next (cheap) agreement, so no rank ever waits in a collective for longer than one batch.
    # The result is then computed on the images every rank finished, and logged as partial.
    max_seconds: float = Field(300.0, gt=0)


class RunConfig(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    compile: bool = False
    # Where multi-crop runs: "auto" = the training device; "cpu" = the plain path (crops made on
    # the CPU, then copied), kept as the baseline of bench/train_throughput.py.
    augment_device: Literal["auto", "cpu"] = "auto"
    save_every_epochs: int = Field(10, ge=0)
    save_every_steps: int = Field(0, ge=0)  # 0 = only at epoch boundaries and the end
    max_steps: int = Field(0, ge=0)  # stop early (the schedules still span the whole run)
    log_every_steps: int = Field(20, ge=1)
    tensorboard: bool = True
    threads: int = Field(0, ge=0)  # torch CPU threads; 0 = torch's default


class TrainConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    crops: CropConfig = Field(default_factory=CropConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.crops.global_size % self.model.patch_size or (
            self.crops.local_number and self.crops.local_size % self.model.patch_size
        ):
            raise ValueError("crop sizes must be multiples of model.patch_size")
        if 2 * self.eval.views.shift >= self.model.img_size:
            raise ValueError("eval.views.shift must be less than half of model.img_size")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def digest(self) -> str:
        """Short hash of the resolved config, for provenance."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _section_fields(key: str) -> list[str]:
    """The valid keys beside `key` (a dotted path), for 'did you mean'."""
    model: type[BaseModel] = TrainConfig
    for part in key.split(".")[:-1]:
        field = model.model_fields.get(part)
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    prefix = key.rpartition(".")[0]
    return [f"{prefix}.{name}" if prefix else name for name in model.model_fields]


def _explain(exc: ValidationError) -> ConfigError:
    """One line per problem, each naming the dotted key (and, for an unknown key, the right one)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            if key in RENAMED:
                hint = f"; use {RENAMED[key]}"
            else:
                near = difflib.get_close_matches(key, _section_fields(key), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]}?" if near else ""
            lines.append(f"unknown config key: {key}{hint}")
        elif key:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        else:
            lines.append(err["msg"].removeprefix("Value error, "))
    return ConfigError("; ".join(lines))


def _merge(base: dict[str, Any], extra: dict[str, Any], replace: str | None = None) -> None:
    """Merge `extra` into `base`; a mapping replaces the one it lands on only at the override's
    own key (`replace`): `model.kwargs={...}` replaces the timm kwargs, `model.kwargs.depth=6`
    changes one of them and keeps the rest."""
    for name, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict) and name != replace:
            _merge(base[name], value, replace)
        else:
            base[name] = value


# Keys that earlier versions wrote into every run's config.yaml and that no longer exist: a
# run folder of theirs still exports and resumes (the keys were never read).
WRITTEN_BEFORE = ("loss.teacher_temp",)


def _drop_written_before(data: dict[str, Any]) -> None:
    for key in WRITTEN_BEFORE:
        section, _, name = key.rpartition(".")
        node = data.get(section)
        if isinstance(node, dict) and node.pop(name, None) is not None:
            log.info(
                "ignoring %s from a run written by an earlier version (it was never read)", key
            )


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, run: bool = False
) -> TrainConfig:
    """Build a config from defaults, then a YAML preset, then `a.b=value` overrides.

    Args:
        path: YAML preset (see configs/); None keeps the reference defaults.
        overrides: strings like `optim.epochs=5` or `crops.global_scale=[0.3,1]`.
        run: `path` is a run's own config.yaml, perhaps written by an earlier version.
    Raises:
        ConfigError: naming every bad key (with the nearest valid key for a typo) or value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        if run:
            _drop_written_before(data)
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
        _merge(data, nested, replace=parts[-1] if len(parts) > 1 else None)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc) from None


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (tuples become lists, which load back the same)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
