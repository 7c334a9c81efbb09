"""Model packages from a training run (`dinoserve export`) or from official DINO weights through
timm (`dinoserve import`). Both go through `write_package`, which checks the export and
only then makes the package live."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import save_file
from torch import nn

from core import package
from core.vit import EmbedAttention, build_vit
from evaluation.real_images import Preprocessing, RealImages, load_real_images
from evaluation.sources import EvalError
from evaluation.variant_guard import (
    MAX_KNN_DROP,
    MIN_ATTENTION_COSINE,
    MIN_COSINE,
    Forward,
    check_variant,
    run_forward,
)
from training import checkpoint
from training.backbone import backbone_kwargs
from training.config import TrainConfig, load_config
from training.model_card import write_card
from training.onnx_export import (
    ExportError,
    check_images,
    check_parity,
    export_onnx,
    ort_session,
    quantize_int8,
)
from training.published import build_published
from training.static_int8 import quantize_int8_static

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeOptions:
    """Where the quantised variants' calibration and guard images come from, how many, and the
    guard's thresholds: the values of DINOSERVE_QUANTIZE__* (`QuantizeSettings`, whose defaults
    these are), passed in by the CLI."""

    calibration_dir: Path | None = None  # a folder or tar; class folders turn on the k-NN part
    calibration_images: int = 256  # activation ranges from these
    guard_images: int = 512  # held out from calibration, for the guard
    min_cosine: float = MIN_COSINE
    min_attention_cosine: float = MIN_ATTENTION_COSINE
    max_knn_drop: float = MAX_KNN_DROP


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


def _variants(quantize: str | Sequence[str] | None) -> list[str]:
    wanted = [quantize] if isinstance(quantize, str) else list(quantize or [])
    unknown = [q for q in wanted if q not in package.QUANTIZED]
    if unknown:
        raise ValueError(f"unknown quantisation {unknown}: use {', '.join(package.QUANTIZED)}")
    return list(dict.fromkeys(wanted))


def _forward(path: Path) -> Forward:
    sess = ort_session(path)
    return lambda x: tuple(sess.run(["embedding", "attention"], {"images": x}))  # type: ignore[return-value]


def guard_images(
    calibration: Path | None, meta: dict[str, Any], size: int, quant: QuantizeOptions
) -> tuple[RealImages | None, RealImages]:
    """The calibration images and the guard's held-out images of `calibration` (disjoint), or
    (None, the export's real-looking check images) without a source."""
    if calibration is None:
        real = check_images(size, meta["mean"], meta["std"], meta["crop_pct"])["real"]
        return None, RealImages(real, None)
    prep = Preprocessing(size, tuple(meta["mean"]), tuple(meta["std"]), meta["crop_pct"])
    try:
        cal, held = load_real_images(
            calibration, prep, [quant.calibration_images, quant.guard_images]
        )
    except EvalError as exc:
        raise ExportError(f"calibration images: {exc}") from exc
    return cal, held


def quantized_variants(
    fp32: Path,
    stage: Path,
    variants: list[str],
    cal: RealImages | None,
    held: RealImages,
    quant: QuantizeOptions,
) -> dict[str, package.OnnxVariant]:
    """Write each quantised variant into `stage` and keep those that pass the accuracy guard
    (evaluation/variant_guard.py) on the held-out images; the others are deleted, logged."""
    ref = run_forward(_forward(fp32), held.images)
    kept: dict[str, package.OnnxVariant] = {}
    for v in variants:
        float_nodes: list[str] = []
        fmt = "onnx"
        if v == "int8":
            path = stage / package.ONNX_INT8
            with quiet_root_info():
                quantize_int8(fp32, path)
            forward = _forward(path)
        elif v == "int8-static":
            if cal is None:
                raise ExportError(
                    "int8-static needs calibration images: name a folder or tar with "
                    "--calibration DIR (or DINOSERVE_QUANTIZE__CALIBRATION_DIR)"
                )
            path = stage / package.ONNX_INT8_STATIC
            with quiet_root_info():
                float_nodes = quantize_int8_static(fp32, path, cal.images)
            forward = _forward(path)
        else:  # int8-nncf: OpenVINO's own post-training quantisation (the openvino extra)
            from training.nncf_int8 import ov_forward, quantize_nncf

            if cal is None:
                raise ExportError(
                    "int8-nncf needs calibration images: --calibration DIR (or "
                    "DINOSERVE_QUANTIZE__CALIBRATION_DIR)"
                )
            path = stage / package.OV_INT8_NNCF
            quantize_nncf(fp32, path, cal.images)
            forward, fmt = ov_forward(path), "openvino"
        result = check_variant(
            ref,
            forward,
            held.images,
            held.labels,
            quant.min_cosine,
            quant.min_attention_cosine,
            quant.max_knn_drop,
        )
        log.info("%s guard: %s", v, result)
        if result.passed:
            kept[v] = package.OnnxVariant(
                file=path.name,
                format=fmt,
                min_cosine=result.min_cosine,
                guard=result.to_dict(),
                float_nodes=float_nodes,
            )
        else:  # kept only while it stays close to fp32
            for f in (path, path.with_suffix(".bin")):
                f.unlink(missing_ok=True)
            log.warning("%s dropped, it fails the accuracy guard: %s", v, result.reason)
    return kept


def write_package(
    vit: nn.Module,
    meta: dict[str, Any],
    models_dir: Path,
    name: str,
    quantize: str | Sequence[str] | None = None,
    activate: bool = True,
    calibration: Path | None = None,
    quant: QuantizeOptions | None = None,
) -> Path:
    """Export, check, write and (by default) switch CURRENT to a new version of model `name`.

    Args:
        vit: a timm ViT (num_classes=0) whose weights to package.
        meta: model.json fields that depend on the source (arch, timm_kwargs, mean, std,
            crop_pct, provenance, evaluation).
        models_dir: the registry, e.g. var/models.
        name: model name.
        quantize: quantised variants to add for CPUs, of core.package.QUANTIZED ("int8",
            "int8-static", "int8-nncf"); each is kept only if it passes the accuracy guard.
        activate: switch CURRENT to it. False leaves CURRENT alone: a refresh (`dinoserve
            refresh`) moves it once the collections are re-embedded.
        calibration: real images (folder or tar) for static int8 and for the guard; without
            them the guard runs on the export's real-looking check images, without k-NN.
        quant: guard thresholds and image counts (DINOSERVE_QUANTIZE__*).
    Returns:
        The new package directory.
    """
    variants = _variants(quantize)
    quant = quant or QuantizeOptions()
    vit = vit.float().eval()
    pe = vit.patch_embed
    size = pe.img_size[0]
    views = package.EmbedViews.model_validate(meta.get("views") or {})
    if 2 * views.shift >= size:
        raise ExportError(f"views.shift {views.shift} must be less than half the input, {size} px")
    meta = {**meta, "views": views}
    net = EmbedAttention(vit, views)
    stage = package.staging_dir(Path(models_dir), name)
    try:
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, stage / package.WEIGHTS)
        export_onnx(net, stage / package.ONNX_FP32, size)
        batches = check_images(size, meta["mean"], meta["std"], meta["crop_pct"])
        parity = check_parity(net, stage / package.ONNX_FP32, batches)
        log.info("ONNX Runtime vs PyTorch, max abs difference: %s", parity)
        onnx = {"fp32": package.OnnxVariant(file=package.ONNX_FP32)}
        if variants:
            cal, held = guard_images(calibration, meta, size, quant)
            onnx |= quantized_variants(stage / package.ONNX_FP32, stage, variants, cal, held, quant)
        # The attention map's grid: the patch grid, or finer where the views stitch one.
        patch = pe.patch_size[0]
        cell = views.map_cell(patch)
        grid = tuple(g * patch // cell for g in pe.grid_size)
        dims = {
            "img_size": size,
            "patch_size": pe.patch_size[0],
            "embed_dim": vit.num_features,
            "num_heads": vit.blocks[-1].attn.num_heads,
            "grid": grid,
            "cell": cell,
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
            grid=grid,
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
        "views": cfg.eval.views,
    }


def export_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    quantize: str | Sequence[str] | None = None,
    ckpt_name: str = "last.pt",
    activate: bool = True,
    calibration: Path | None = None,
    quant: QuantizeOptions | None = None,
    views: package.EmbedViews | None = None,
) -> Path:
    """Package the teacher backbone of a training run.

    Args:
        run_dir: a run directory written by training/train.py.
        models_dir: the registry.
        name: model name.
        quantize: quantised variants to add (see write_package).
        ckpt_name: checkpoint inside run_dir.
        activate: switch CURRENT to the new version (see write_package).
        calibration: images for static int8 and the guard; default `quant.calibration_dir`,
            else the run's own training data (the collection it was trained for).
        quant: DINOSERVE_QUANTIZE__* settings.
        views: test-time views averaged into the embedding; default the run's `eval.views`.
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", run=True)
    ckpt = checkpoint.load(run_dir / ckpt_name)
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in ckpt["teacher"].items() if k.startswith(prefix)}
    meta = config_meta(cfg)
    if views is not None:
        meta["views"] = views
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
            # where a continued run (`train --init`) started: a package or a published name
            "init": cfg.model.init or None,
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
    quant = quant or QuantizeOptions()
    if calibration is None and quantize:
        calibration = quant.calibration_dir
        if calibration is None and cfg.data.train and Path(cfg.data.train).exists():
            calibration = Path(cfg.data.train)
    return write_package(vit, meta, models_dir, name, quantize, activate, calibration, quant)


def import_published(
    model_name: str,
    models_dir: Path,
    name: str,
    weights: Path | None = None,
    quantize: str | Sequence[str] | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    img_size: int | None = None,
    activate: bool = False,
    calibration: Path | None = None,
    quant: QuantizeOptions | None = None,
    views: package.EmbedViews | None = None,
) -> Path:
    """Package a published backbone (DINO, DINOv2, DINOv3) through timm, e.g.
    `vit_small_patch14_reg4_dinov2.lvd142m`, from the hub or a local file.

    Args:
        model_name: timm name with its pretrained tag.
        models_dir: the registry.
        name: model name.
        weights: a local file in the official layout or timm's, instead of the hub.
        quantize: quantised variants to add (see write_package).
        timm_kwargs: extra timm kwargs (e.g. a smaller model for tests).
        img_size: serving size (default 224: the families' evaluation size); the position
            table is resampled to it.
        activate: switch the name's CURRENT to it; by default an import changes nothing that
            other commands use.
        calibration: images for static int8 and the guard; default `quant.calibration_dir`.
        quant: DINOSERVE_QUANTIZE__* settings.
        views: test-time views averaged into the embedding (default: the image alone).
    """
    vit, kwargs, provenance = build_published(model_name, img_size, weights, timm_kwargs)
    cfg = vit.pretrained_cfg
    meta = {
        "arch": model_name,
        "timm_kwargs": kwargs,
        "mean": tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        "std": tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        "crop_pct": 0.875,  # the families' k-NN evaluations: resize to 256, crop 224
        "views": views,  # None: write_package's default, the image alone
        "provenance": provenance,
    }
    quant = quant or QuantizeOptions()
    calibration = calibration or quant.calibration_dir
    return write_package(vit, meta, models_dir, name, quantize, activate, calibration, quant)


__all__ = ["ExportError", "QuantizeOptions", "export_run", "import_published", "write_package"]
