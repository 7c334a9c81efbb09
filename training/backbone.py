"""timm ViT backbones with dynamic image size, so global and local crops share one model."""

from __future__ import annotations

import timm
import torch
from torch import nn

from training.config import ModelConfig


def create_backbone(cfg: ModelConfig, drop_path_rate: float | None = None) -> nn.Module:
    """A timm ViT returning the CLS feature (after the final norm) for any multiple of the patch.

    Args:
        cfg: architecture name, patch and image size, extra timm kwargs.
        drop_path_rate: overrides cfg (the teacher uses 0).
    """
    return timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        dynamic_img_size=True,
        drop_path_rate=cfg.drop_path_rate if drop_path_rate is None else drop_path_rate,
        **cfg.kwargs,
    )


def backbone_kwargs(cfg: ModelConfig) -> dict:
    """The timm kwargs that rebuild this backbone for inference (no drop path)."""
    return {
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": True,
        **cfg.kwargs,
    }


class MultiCropNet(nn.Module):
    """Backbone + head over a list of crop batches; same-resolution crops share a forward.

    Returns the head outputs of all views concatenated in input order, and the backbone CLS
    features of the first `n_first` views (the global views, used by KoLeo) — sliced by view, not
    by resolution group, which would hold every view when local and global crops share a size.
    """

    n_first = 2

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        groups: list[list[torch.Tensor]] = []
        for c in crops:
            if groups and groups[-1][0].shape[-2:] == c.shape[-2:]:
                groups[-1].append(c)
            else:
                groups.append([c])
        feats = torch.cat([self.backbone(torch.cat(g)) for g in groups])  # (V·B, D)
        n_first = sum(c.shape[0] for c in crops[: self.n_first])
        return self.head(feats), feats[:n_first]
