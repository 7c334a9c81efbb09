"""Meta's published DINO backbones as timm models: which family a timm name belongs to, the size
it is served at, and its weights read from a local file in Meta's official key layout or in
timm's, converted by timm's own checkpoint filters (`vision_transformer.checkpoint_filter_fn`
for DINO and DINOv2, `eva.checkpoint_filter_fn` for DINOv3), never by a table of our own.

Every family is served with the CLS token after the final norm: the feature DINO's, DINOv2's and
DINOv3's own k-NN evaluations use (their linear probes add the mean patch token; retrieval by
cosine follows k-NN). Every family is served at 224 px unless asked: the size of those
evaluations (resize to 256, centre crop 224), a quarter to a fifth of DINOv2's 518 px cost.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import eva, vision_transformer
from timm.models.eva import Eva
from torch import nn

from core.package import PackageError
from core.vit import build_vit

EVAL_SIZE = 224


class WeightsMismatch(PackageError):
    """A weights file fits neither the official layout of the model's family nor timm's."""


class UnsupportedModel(PackageError):
    """A timm name that is no ViT with a CLS token (e.g. a DINOv3 ConvNeXt), or cannot be built."""


@dataclass(frozen=True)
class Family:
    """One family of published backbones and the keys that identify its files.

    Args:
        name: DINO, DINOv2, DINOv3, or "timm ViT" for any other timm ViT.
        official: a few keys of Meta's own checkpoint files.
        timm: the same parts as timm names them.
    """

    name: str
    official: tuple[str, ...]
    timm: tuple[str, ...]


_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
DINO = Family("DINO", _VIT_KEYS, _VIT_KEYS)
DINOV2 = Family(
    "DINOv2",
    (
        "cls_token",
        "pos_embed (with the CLS row)",
        "register_tokens (reg4)",
        "mask_token",
        "blocks.0.ls1.gamma",
    ),
    ("cls_token", "pos_embed", "reg_token (reg4)", "blocks.0.ls1.gamma"),
)
DINOV3 = Family(
    "DINOv3",
    (
        "cls_token",
        "storage_tokens",
        "mask_token",
        "rope_embed.periods",
        "blocks.0.ls1.gamma",
        "blocks.0.attn.qkv.bias_mask",
    ),
    ("cls_token", "reg_token", "blocks.0.gamma_1", "blocks.0.attn.qkv.weight"),
)
TIMM_VIT = Family("timm ViT", _VIT_KEYS, _VIT_KEYS)


def family_of(arch: str) -> Family:
    """The family of a timm name, e.g. `vit_small_patch14_reg4_dinov2.lvd142m` → DINOv2.

    Args:
        arch: timm model name, with or without its pretrained tag.
    """
    base, _, tag = arch.partition(".")
    if "dinov3" in base or "dinov3" in tag:
        return DINOV3
    if "dinov2" in base or "dinov2" in tag:
        return DINOV2
    if tag == "dino":
        return DINO
    return TIMM_VIT


def layout_of(state: dict[str, Any]) -> str:
    """What a state dict looks like, for messages: `DINOv3 (official layout)`, `timm's Eva
    layout (DINOv3)`, …"""
    if "storage_tokens" in state:
        return "DINOv3 (official layout)"
    if "mask_token" in state:
        return "DINOv2 (official layout)"
    if any(k.endswith(".gamma_1") for k in state):
        return "timm's Eva layout (DINOv3)"
    if "cls_token" in state and "pos_embed" in state:
        return "a ViT (DINO's or timm's layout)"
    return "no ViT layout known here"


def _unwrap(state: dict[str, Any]) -> dict[str, Any]:
    """A DINO training checkpoint's teacher backbone, without `module.`/`backbone.` prefixes;
    timm's filters unwrap `model` and `state_dict` themselves."""
    if isinstance(state.get("teacher"), dict):
        state = state["teacher"]
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
        elif any(k.startswith(prefix) for k in state):  # a head beside the backbone
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors, .pth or .pt file (tensors only, never pickled code).

    Args:
        path: the weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, OSError) as exc:
        raise WeightsMismatch(f"{path}: not a readable state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise WeightsMismatch(f"{path}: holds a {type(state).__name__}, not a state dict")
    return _unwrap(state)


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official or timm keys → the keys of `model`, through timm's checkpoint filter for its
    class (position tables resampled to the model's grid, DINOv2's CLS row folded, DINOv3's
    storage tokens, layer scales and q/v biases renamed).

    Args:
        state: the file's state dict.
        model: the timm ViT or Eva to load into.
    """
    if isinstance(model, Eva):
        with contextlib.redirect_stdout(io.StringIO()):  # the filter prints a skipped q_bias
            return eva.checkpoint_filter_fn(dict(state), model)
    return vision_transformer.checkpoint_filter_fn(dict(state), model)


def _dropped_biases(state: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """True when a DINOv3 file has non-zero q/v biases that a bias-free timm model would drop."""
    bias = state.get("blocks.0.attn.qkv.bias")
    if not isinstance(model, Eva) or bias is None or "blocks.0.attn.q_bias" in model.state_dict():
        return False
    q, _, v = bias.chunk(3, dim=-1)
    return bool(q.abs().max() > 0 or v.abs().max() > 0)


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, … ({len(keys)})" if len(keys) > n else shown


def load_weights(model: nn.Module, path: Path, arch: str) -> str:
    """Load a local weights file into `model`, strictly, after timm's key conversion.

    Args:
        model: the timm model built for `arch` (at its serving size).
        path: .safetensors/.pth/.pt in the family's official layout or timm's.
        arch: the timm name, for messages.
    Returns:
        The file's layout as `layout_of` names it (for provenance).
    Raises:
        WeightsMismatch: one line naming the family, the keys it expected and what differed.
    """
    state = read_state(path)
    layout, family = layout_of(state), family_of(arch)
    base = arch.partition(".")[0]
    if _dropped_biases(state, model) and not base.endswith("_qkvb"):
        raise WeightsMismatch(
            f"{path.name} has DINOv3 q/v biases that {arch} has no place for: import it as "
            f"{base}_qkvb{arch[len(base) :]}"
        )
    have, want = _registers(state), _registers(model.state_dict())
    if have != want:  # checked first: timm's filters assume the counts agree
        problem = f"the file has {have} register/storage tokens, {arch} has {want}"
    else:
        try:
            converted = convert(state, model)
        except (KeyError, RuntimeError, ValueError, IndexError) as exc:
            problem = f"timm's filter failed ({exc})"
        else:
            problem = _differences(converted, model.state_dict())
    if problem:
        raise WeightsMismatch(
            f"{path.name} does not fit {arch} ({family.name}): expected {family.name}'s "
            f"official keys ({', '.join(family.official)}) or timm's "
            f"({', '.join(family.timm)}); the file looks like {layout}: {problem}"
        )
    model.load_state_dict(converted, strict=True)
    return layout


def _registers(state: dict[str, torch.Tensor]) -> int:
    """Register (DINOv2) or storage (DINOv3) tokens in a state dict of any layout."""
    for key in ("register_tokens", "storage_tokens", "reg_token"):
        if key in state:
            return int(state[key].shape[1])
    return 0


def _differences(converted: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """Missing and unexpected keys and shape mismatches, shortened to fit one line."""
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    shapes = [
        f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in converted and converted[k].shape != own[k].shape
    ]
    parts = [f"missing {_few(missing)}"] if missing else []
    parts += [f"unexpected {_few(unexpected)}"] if unexpected else []
    parts += [f"shapes {_few(shapes, 2)}"] if shapes else []
    return "; ".join(parts)


def build_published(
    arch: str,
    img_size: int | None = None,
    weights: Path | None = None,
    timm_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A published backbone as a timm model at its serving size, with its weights.

    Args:
        arch: timm name with its pretrained tag, e.g. `vit_small_patch16_dinov3.lvd1689m`.
        img_size: serving size in pixels (a multiple of the patch); default 224.
        weights: a local file (official or timm layout) instead of the hub.
        timm_kwargs: extra timm kwargs (e.g. a tiny model for tests).
    Returns:
        (model in eval mode, the timm kwargs that rebuild it, provenance fields).
    Raises:
        UnsupportedModel: not a ViT with a CLS token, a bad size, or the hub unreachable.
        WeightsMismatch: the file fits neither layout.
    """
    family = family_of(arch)
    base = arch.partition(".")[0]
    if not timm.is_model(base):
        raise UnsupportedModel(f"timm has no model {base!r} (see timm.list_models('*dino*'))")
    module = timm.models.model_entrypoint(base).__module__.rsplit(".", 1)[-1]
    if module not in ("vision_transformer", "eva"):
        raise UnsupportedModel(
            f"{arch} is a timm {module} model, not a ViT with a CLS token: the served embedding "
            "and attention map and the trainer's DINO head all read a ViT's CLS token (DINO, "
            "DINOv2 and DINOv3 ViTs)"
        )
    size = EVAL_SIZE if img_size is None else img_size
    kwargs = {"num_classes": 0, "global_pool": "token", "dynamic_img_size": True}
    kwargs |= {"img_size": size, **(timm_kwargs or {})}
    try:
        model = build_vit(arch, kwargs, pretrained=weights is None)
    except (OSError, ValueError, RuntimeError, AssertionError, TypeError) as exc:
        hint = "" if weights else " (without the hub: --weights FILE)"
        raise UnsupportedModel(f"cannot build {arch}: {exc}{hint}") from exc
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModel(f"{arch} has no CLS token: its embedding could not be DINO's")
    patch = model.patch_embed.patch_size[0]
    if size % patch:
        raise UnsupportedModel(f"--img-size {size} is not a multiple of {arch}'s patch ({patch})")
    provenance: dict[str, Any] = {"source": "timm", "timm_model": arch, "family": family.name}
    if weights is not None:
        provenance["layout"] = load_weights(model, Path(weights), arch)
        provenance["weights"] = str(Path(weights).resolve())
    else:
        provenance["weights"] = model.pretrained_cfg.get("hf_hub_id")
    return model.eval(), kwargs, provenance
