"""Continued pretraining: `dinoserve train --init MODEL` starts student and teacher backbones
from published or packaged weights instead of random ones (the DINO heads start new).

MODEL is a package path, a model name in the registry, or a timm name with its tag plus a local
weights file (`--init-weights`, any layout `dinoserve import` reads). The run's config records
it (`model.init`, `model.init_weights`), and the architecture comes from it: `init_overrides`
turns it into the `model.*` overrides, `init_state` gives the backbone's weights.

A package's weights can continue at another input size (`model.img_size=96` after `--init`):
its position table is resampled to the run's patch grid (timm's `resample_abs_pos_embed`, as
timm does when it loads a checkpoint at another size), so the fine-tune starts from the same
features seen on a finer grid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from core import package
from training.config import ConfigError, ModelConfig
from training.published import build_published

# Set by create_backbone itself (training/backbone.py), so not part of model.kwargs.
OWN_KWARGS = ("num_classes", "global_pool", "dynamic_img_size", "img_size", "patch_size")


def _package_dir(spec: str, models_dir: Path) -> Path | None:
    """The package `spec` names (path or registry name), or None when it is no package."""
    if (Path(spec) / package.META).is_file():
        return Path(spec).resolve()
    if (Path(models_dir) / spec).is_dir():
        return package.resolve(models_dir, spec).resolve()
    return None


def init_overrides(spec: str, weights: str | None, models_dir: Path) -> list[str]:
    """The `model.*` config overrides that make a run start from `spec`.

    Args:
        spec: a package path, a registry name, or a timm name with its tag.
        weights: a local weights file for a timm name (None: the hub).
        models_dir: the registry that names resolve in.
    Raises:
        ConfigError: `spec` is none of them, or a family this trainer cannot train.
    """
    found = _package_dir(spec, models_dir)
    if found is not None:
        if weights:
            raise ConfigError("--init-weights goes with a timm name, not with a package")
        meta = package.read_meta(found)
        arch, kwargs, patch, size = meta.arch, meta.timm_kwargs, meta.patch_size, meta.img_size
        ref = str(found)
    else:
        # builds the model (refusing what is no ViT with a CLS token) and checks the file fits
        vit, kwargs, _ = build_published(spec, None, Path(weights) if weights else None)
        arch, patch, size = spec, vit.patch_embed.patch_size[0], kwargs["img_size"]
        ref = spec
    extra = {k: v for k, v in kwargs.items() if k not in OWN_KWARGS}
    out = [
        f"model.arch={arch}",
        f"model.patch_size={patch}",
        f"model.img_size={size}",
        f"model.kwargs={json.dumps(extra)}",
        f"model.init={ref}",
    ]
    return out + ([f"model.init_weights={Path(weights).resolve()}"] if weights else [])


def init_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The backbone weights a run starts from (`model.init`), for `create_backbone(cfg)`.

    Args:
        cfg: the model section, with `init` (a package path or a timm name) set.
    """
    if (Path(cfg.init) / package.META).is_file():
        meta = package.verify(cfg.init)
        state = load_file(Path(cfg.init) / package.WEIGHTS)
        grid, to = meta.img_size // meta.patch_size, cfg.img_size // cfg.patch_size
        return fit_pos_embed(state, grid, to)
    weights = Path(cfg.init_weights) if cfg.init_weights else None
    extra: dict[str, Any] = {"patch_size": cfg.patch_size, **cfg.kwargs}
    vit, _, _ = build_published(cfg.init, cfg.img_size, weights, extra)
    return vit.state_dict()


def fit_pos_embed(state: dict[str, torch.Tensor], grid: int, to: int) -> dict[str, torch.Tensor]:
    """`state` with its position table resampled from a `grid`² to a `to`² patch grid.

    The tokens before the patches (CLS, registers) keep their entries; the patches' are
    resampled bicubically. Unchanged where the grids agree or the model has no table.

    Raises:
        ConfigError: the table does not hold a `grid`² patch grid (not the package's model).
    """
    pos = state.get("pos_embed")
    if pos is None or grid == to:
        return state
    prefix = pos.shape[1] - grid * grid
    if prefix < 0:
        raise ConfigError(
            f"the position table has {pos.shape[1]} entries, fewer than a {grid}² grid"
        )
    resized = resample_abs_pos_embed(pos, (to, to), (grid, grid), num_prefix_tokens=prefix)
    return {**state, "pos_embed": resized}
