"""Model packages from a training run (`dinoserve export`) or from official DINO weights through
timm (`dinoserve import`). Both go through `write_package`, which checks the export and
only then makes the package live."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import save_file
from torch import nn

from core import package
from core.vit import EmbedAttention, build_vit
from training import checkpoint
from training.backbone import backbone_kwargs
from training.config import TrainConfig, load_config
from training.model_card import write_card
from training.onnx_export import (
    INT8_MIN_COSINE,
    ExportError,
    check_images,
    check_parity,
    export_onnx,
    quantize_int8,
)
from training.published import build_published

log = logging.getLogger(__name__)


@contextmanager
def quiet_root_info() -> Iterator[None]:
    """Quiet onnxruntime's quantiser: it reports every node it leaves alone as INFO on the root
    logger itself (`INFO root: Ignore MatMul …`, dozens per model), and its steps on its own."""

    def keep(record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno > logging.INFO

    root, ours = logging.getLogger(), logging.getLogger("onnxruntime.quantization")
    level = ours.level
    root.addFilter(keep)
    ours.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(keep)
        ours.setLevel(level)


def write_package(
    vit: nn.Module,
    meta: dict[str, Any],
    models_dir: Path,
    name: str,
    quantize: str | None = None,
    activate: bool = True,
) -> Path:
    """Export, check, write and (by default) switch CURRENT to a new version of model `name`.

    Args:
        vit: a timm ViT (num_classes=0) whose weights to package.
        meta: model.json fields that depend on the source (arch, timm_kwargs, mean, std,
            crop_pct, provenance, evaluation).
        models_dir: the registry, e.g. var/models.
        name: model name.
        quantize: None, or "int8" for an extra quantised ONNX file for CPUs.
        activate: switch CURRENT to it. False leaves CURRENT alone: a refresh (`dinoserve
            refresh`) moves it once the collections are re-embedded.
    Returns:
        The new package directory.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantisation {quantize!r}: only int8")
    vit = vit.float().eval()
    net = EmbedAttention(vit)
    pe = vit.patch_embed
    size = pe.img_size[0]
    stage = package.staging_dir(Path(models_dir), name)
    try:
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, stage / package.WEIGHTS)
        export_onnx(net, stage / package.ONNX_FP32, size)
        batches = check_images(size, meta["mean"], meta["std"], meta["crop_pct"])
        parity = check_parity(net, stage / package.ONNX_FP32, batches)
        log.info("ONNX Runtime vs PyTorch, max abs difference: %s", parity)
        onnx = {"fp32": package.OnnxVariant(file=package.ONNX_FP32)}
        if quantize == "int8":
            with quiet_root_info():
                cos = quantize_int8(
                    stage / package.ONNX_FP32, stage / package.ONNX_INT8, batches["real"]
                )
            if cos >= INT8_MIN_COSINE:
                onnx["int8"] = package.OnnxVariant(file=package.ONNX_INT8, min_cosine=cos)
            else:  # kept only while it stays close to fp32
                (stage / package.ONNX_INT8).unlink()
                log.warning("int8 dropped: min cosine to fp32 %.4f < %s", cos, INT8_MIN_COSINE)
        dims = {
            "img_size": size,
            "patch_size": pe.patch_size[0],
            "embed_dim": vit.num_features,
            "num_heads": vit.blocks[-1].attn.num_heads,
            "grid": tuple(pe.grid_size),
            "parity": parity,
            "onnx": list(onnx),
        }
        write_card(stage, {**meta, "name": name}, net, dims)
        full = package.PackageMeta(
            name=name,
            img_size=size,
            patch_size=pe.patch_size[0],
            embed_dim=vit.num_features,
            num_heads=vit.blocks[-1].attn.num_heads,
            grid=tuple(pe.grid_size),
            onnx=onnx,
            parity=parity,
            **meta,
        )
        out = package.finalize(stage, full)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if activate:
        package.switch_current(out.parent, out.name)
    return out


def config_meta(cfg: TrainConfig) -> dict[str, Any]:
    """A package's network and preprocessing fields (model.json) for a training config: arch,
    timm kwargs, the normalisation and the evaluation crop. Provenance is the caller's."""
    return {
        "arch": cfg.model.arch,
        "timm_kwargs": backbone_kwargs(cfg.model),
        "mean": cfg.crops.mean,
        "std": cfg.crops.std,
        "crop_pct": cfg.eval.crop_pct,
    }


def export_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    quantize: str | None = None,
    ckpt_name: str = "last.pt",
    activate: bool = True,
) -> Path:
    """Package the teacher backbone of a training run.

    Args:
        run_dir: a run directory written by training/train.py.
        models_dir: the registry.
        name: model name.
        quantize: None or "int8".
        ckpt_name: checkpoint inside run_dir.
        activate: switch CURRENT to the new version (see write_package).
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", run=True)
    ckpt = checkpoint.load(run_dir / ckpt_name)
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in ckpt["teacher"].items() if k.startswith(prefix)}
    meta = config_meta(cfg)
    vit = build_vit(meta["arch"], meta["timm_kwargs"])
    vit.load_state_dict(weights, strict=True)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    evaluation = {k: summary.get(k) for k in ("knn_start", "knn_end", "steps")}
    evaluation.update(k=cfg.eval.k, temperature=cfg.eval.temperature)
    meta |= {
        "provenance": {
            "source": "training",
            "run_dir": str(run_dir.resolve()),
            "checkpoint": ckpt_name,
            "step": int(ckpt.get("step", 0)),
            "config_hash": cfg.digest(),
            "data": cfg.data.train,
            "training": {
                "epochs": cfg.optim.epochs,
                "batch_size": cfg.data.batch_size,
                "crops": f"2 × {cfg.crops.global_size} px + {cfg.crops.local_number} × "
                f"{cfg.crops.local_size} px",
                "wall_s": summary.get("wall_s"),
                "device": summary.get("device"),
            },
        },
        "evaluation": evaluation,
    }
    return write_package(vit, meta, models_dir, name, quantize, activate)


def import_published(
    model_name: str,
    models_dir: Path,
    name: str,
    weights: Path | None = None,
    quantize: str | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    img_size: int | None = None,
    activate: bool = False,
) -> Path:
    """Package a published backbone (DINO, DINOv2, DINOv3) through timm, e.g.
    `vit_small_patch14_reg4_dinov2.lvd142m`, from the hub or a local file.

    Args:
        model_name: timm name with its pretrained tag.
        models_dir: the registry.
        name: model name.
        weights: a local file in the official layout or timm's, instead of the hub.
        quantize: None or "int8".
        timm_kwargs: extra timm kwargs (e.g. a smaller model for tests).
        img_size: serving size (default 224: the families' evaluation size); the position
            table is resampled to it.
        activate: switch the name's CURRENT to it; by default an import changes nothing that
            other commands use.
    """
    vit, kwargs, provenance = build_published(model_name, img_size, weights, timm_kwargs)
    cfg = vit.pretrained_cfg
    meta = {
        "arch": model_name,
        "timm_kwargs": kwargs,
        "mean": tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        "std": tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        "crop_pct": 0.875,  # the families' k-NN evaluations: resize to 256, crop 224
        "provenance": provenance,
    }
    return write_package(vit, meta, models_dir, name, quantize, activate)


__all__ = ["ExportError", "export_run", "import_published", "write_package"]
