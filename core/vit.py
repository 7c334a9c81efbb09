"""The served network: a timm ViT wrapped to return its CLS embedding and the last block's CLS
attention over the patch grid, in one forward. The ONNX graph and the torch engine are both this
module, so the two engines cannot drift apart.

Two timm families are served: `VisionTransformer` (DINO, DINOv2 with or without registers) and
`Eva` (DINOv3: RoPE instead of a position table, storage tokens as timm's `reg_token`). Both run
through timm's own modules; only the CLS row of the last block's attention is recomputed here.
A package's `views` (core.package.EmbedViews) are made inside the same forward, so the ONNX graph
averages them too.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.models.eva import Eva
from torch import nn

from core.package import EmbedViews


def build_vit(arch: str, timm_kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """A timm ViT in eval mode, as described by a package's `arch` and `timm_kwargs`.

    Args:
        arch: timm model name, e.g. `vit_small_patch16_224`.
        timm_kwargs: keyword arguments for `timm.create_model` (num_classes=0 for the CLS feature).
        pretrained: let timm fetch its published weights (needs the hub).
    """
    return timm.create_model(arch, pretrained=pretrained, **timm_kwargs).eval()


def _query_key(attn: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (B, heads, N, hd) of a timm attention module, after its q/k norms.

    timm's ViT `Attention` has one biased `qkv`; Eva's has a bias-free `qkv` with `q_bias`,
    `k_bias` (a zero buffer) and `v_bias` beside it, or separate `q_proj`/`k_proj`.
    """
    b, n, _ = y.shape
    if getattr(attn, "qkv", None) is None:  # Eva with qkv_fused=False
        q = attn.q_proj(y).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
        k = attn.k_proj(y).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
    else:
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is None:
            qkv = attn.qkv(y)
        else:
            qkv = F.linear(y, attn.qkv.weight, torch.cat((q_bias, attn.k_bias, attn.v_bias)))
        q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return attn.q_norm(q), attn.k_norm(k)


def cls_attention(
    block: nn.Module, x: torch.Tensor, num_prefix: int, rope: torch.Tensor | None = None
) -> torch.Tensor:
    """The CLS query's softmax attention over the patch keys of `block`, from its own modules.

    Only the CLS row is computed, and the softmax runs over the patch keys alone: each head's
    map is a distribution over patches (DINO's mask normalises the same way), and register or
    storage tokens cannot soak up mass that then looks missing on the image.

    Args:
        block: a timm ViT `Block` or Eva `EvaBlock` (norm1 + attn with q_norm, k_norm, scale).
        x: tokens entering the block, (B, N, C), prefix tokens first.
        num_prefix: number of prefix tokens (CLS + registers).
        rope: the rotary embedding of the patch tokens (Eva), applied to their keys as the
            block does; the CLS query is a prefix token, which RoPE leaves alone.
    Returns:
        (B, heads, N − num_prefix) attention weights.
    """
    attn = block.attn
    q, k = _query_key(attn, block.norm1(x))  # (B, heads, N, hd)
    keys = k[:, :, num_prefix:]
    if rope is not None:
        keys = apply_rot_embed_cat(keys, rope, half=getattr(attn, "rotate_half", False))
    logits = (q[:, :, :1] * attn.scale) @ keys.transpose(-2, -1)  # (B, h, 1, P)
    return logits.squeeze(2).softmax(dim=-1)


def view_batch(images: torch.Tensor, views: EmbedViews) -> torch.Tensor:
    """The views of `images` (B, 3, H, W) stacked view-major: (views.count · B, 3, H, W), the
    images themselves first."""
    out = [images]
    s = views.shift
    if s:
        h, w = images.shape[-2:]
        padded = F.pad(images, (s, s, s, s), mode="replicate")
        for dy, dx in ((0, -s), (0, s), (-s, 0), (s, 0)):
            out.append(padded[..., s + dy : s + dy + h, s + dx : s + dx + w])
    if views.flip:
        out += [v.flip(-1) for v in out]
    return torch.cat(out) if len(out) > 1 else images


class EmbedAttention(nn.Module):
    """images (B, 3, H, W) → (embedding (B, D), attention (B, heads, h, w)).

    With the default views the embedding is exactly `model(images)` of a timm ViT built with
    num_classes=0 and global_pool="token": the CLS token after the final norm, before any head —
    what the DINO, DINOv2 and DINOv3 k-NN evaluations use. With more views (see
    core.package.EmbedViews) it is the mean of the views' unit CLS tokens, all views in one
    batch; the attention is the image's own, averaged with its mirror's (mirrored back) where
    the views include the mirror.

    Args:
        model: a timm VisionTransformer or Eva.
        views: test-time views averaged into the embedding (default: the image alone).
    """

    def __init__(self, model: nn.Module, views: EmbedViews | None = None) -> None:
        super().__init__()
        self.model = model
        self.views = views or EmbedViews()
        self.eval()  # inference only: no dropout, and the exporter sees the served graph

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.views.count
        if count == 1:
            return self._one(images)
        n = images.shape[0]
        embedding, attn = self._one(view_batch(images, self.views))
        # A sum of squares and slices by view, not F.normalize and a reshape to (views, n, D):
        # their ReduceL2, Expand and data-dependent Reshape stop onnxruntime's symbolic shape
        # inference, which every int8 quantisation runs first.
        unit = embedding * torch.rsqrt((embedding * embedding).sum(-1, keepdim=True) + 1e-12)
        embedding = sum(unit[v * n : (v + 1) * n] for v in range(count)) / count
        if not self.views.flip:
            return embedding, attn[:n]
        # The mirror's map, mirrored back, lands on the same patches: their mean is a steadier
        # map (demo backbone: Jaccard 0.487 → 0.514). Moved views fall between patches: unused.
        mirror = attn[(count // 2) * n : (count // 2 + 1) * n].flip(-1)
        return embedding, (attn[:n] + mirror) / 2

    def _one(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        h, w = m.patch_embed.dynamic_feat_size(images.shape[-2:])
        x = m.patch_embed(images)  # (B, h, w, C) with dynamic_img_size, else (B, h·w, C)
        if isinstance(m, Eva):
            # Eva returns the RoPE table beside the tokens and has no patch_drop when its rate
            # is 0 (None: calling it was the DINOv3 export's "'NoneType' is not callable").
            x, rope = m._pos_embed(x)
            ropes = list(rope) if getattr(m, "rope_mixed", False) else [rope] * len(m.blocks)
            x = m.norm_pre(x)
            for blk, r in zip(m.blocks[:-1], ropes, strict=False):
                x = blk(x, rope=r)
            last, rope = m.blocks[-1], ropes[-1]
            attn = cls_attention(last, x, m.num_prefix_tokens, rope)  # (B, heads, h·w)
            x = last(x, rope=rope)
        else:
            x = m.norm_pre(m.patch_drop(m._pos_embed(x)))  # (B, prefix + h·w, C)
            for blk in m.blocks[:-1]:
                x = blk(x)
            last = m.blocks[-1]
            attn = cls_attention(last, x, m.num_prefix_tokens)  # (B, heads, h·w)
            x = last(x)
        embedding = m.forward_head(m.norm(x), pre_logits=True)
        return embedding, attn.reshape(attn.shape[0], attn.shape[1], h, w)
