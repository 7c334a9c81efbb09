"""The served network: a timm ViT wrapped to return its CLS embedding and the last block's CLS
attention over the patch grid, in one forward. The ONNX graph and the torch engine are both this
module, so the two engines cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn


def build_vit(arch: str, timm_kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """A timm ViT in eval mode, as described by a package's `arch` and `timm_kwargs`.

    Args:
        arch: timm model name, e.g. `vit_small_patch16_224`.
        timm_kwargs: keyword arguments for `timm.create_model` (num_classes=0 for the CLS feature).
        pretrained: let timm fetch its published weights (needs the hub).
    """
    return timm.create_model(arch, pretrained=pretrained, **timm_kwargs).eval()


def cls_attention(block: nn.Module, x: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """The CLS query's softmax attention over the patch keys of `block`, from its own modules.

    Only the CLS row is computed, and the softmax runs over the patch keys alone: each head's
    map is a distribution over patches (DINO's mask normalises the same way), and register
    tokens cannot soak up mass that then looks missing on the image.

    Args:
        block: a timm ViT `Block` (norm1 + attn with qkv, q_norm, k_norm, scale, num_heads).
        x: tokens entering the block, (B, N, C), prefix tokens first.
        num_prefix: number of prefix tokens (CLS + registers).
    Returns:
        (B, heads, N − num_prefix) attention weights.
    """
    attn = block.attn
    y = block.norm1(x)
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, hd)
    logits = (q[:, :, :1] * attn.scale) @ k[:, :, num_prefix:].transpose(-2, -1)  # (B, h, 1, P)
    return logits.squeeze(2).softmax(dim=-1)


class EmbedAttention(nn.Module):
    """images (B, 3, H, W) → (embedding (B, D), attention (B, heads, h, w)).

    The embedding is exactly `model(images)` of a timm ViT built with num_classes=0: the
    pooled CLS token after the final norm, before any head.

    Args:
        model: a timm VisionTransformer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # inference only: no dropout, and the exporter sees the served graph

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        h, w = m.patch_embed.dynamic_feat_size(images.shape[-2:])
        x = m.patch_embed(images)  # (B, h, w, C) with dynamic_img_size, else (B, h·w, C)
        x = m.norm_pre(m.patch_drop(m._pos_embed(x)))  # (B, prefix + h·w, C)
        for blk in m.blocks[:-1]:
            x = blk(x)
        last = m.blocks[-1]
        attn = cls_attention(last, x, m.num_prefix_tokens)  # (B, heads, h·w)
        x = m.norm(last(x))
        embedding = m.forward_head(x, pre_logits=True)
        return embedding, attn.reshape(attn.shape[0], attn.shape[1], h, w)
