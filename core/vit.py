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
    """The views of `images` (B, 3, H, W) stacked view-major, in the order of
    `views.offsets()`: (views.count · B, 3, H, W), the images themselves first."""
    if views.count == 1:
        return images
    s = views.shift
    h, w = images.shape[-2:]
    padded = F.pad(images, (s, s, s, s), mode="replicate") if s else images
    out = []
    for dy, dx, mirrored in views.offsets():
        v = padded[..., s + dy : s + dy + h, s + dx : s + dx + w] if s else images
        out.append(v.flip(-1) if mirrored else v)
    return torch.cat(out)


def _move(maps: torch.Tensor, ky: int, kx: int) -> torch.Tensor:
    """(B, heads, h, w) maps moved down by ky and right by kx cells, zeros where nothing lands.
    (Pads and constant slices: an ONNX graph of fixed ops whatever the batch.)"""
    top, bottom, left, right = max(ky, 0), max(-ky, 0), max(kx, 0), max(-kx, 0)
    padded = F.pad(maps, (left, right, top, bottom))
    return padded[..., bottom : -top or None, right : -left or None]


def stitch_maps(attn: torch.Tensor, n: int, views: EmbedViews, patch: int) -> torch.Tensor:
    """The image's attention map from its views' maps (views.count · n, heads, h, w).

    Each view's map is mirrored back where the view was mirrored, brought to cells of
    `views.map_cell(patch)` pixels and moved back by its view's offset; the map is their mean
    per cell (over the views that saw it), normalised to sum to 1 per head. Where the cell is
    the patch (see EmbedViews.map_cell), moved views are left out.
    """
    cell = views.map_cell(patch)
    scale = patch // cell
    total = count = None
    for v, (dy, dx, mirrored) in enumerate(views.offsets()):
        if cell == patch and (dy or dx):
            continue
        m = attn[v * n : (v + 1) * n]
        if mirrored:
            m = m.flip(-1)
        if scale > 1:
            m = F.interpolate(m, scale_factor=scale, mode="nearest")
        seen = torch.ones_like(m[:1, :1])
        # View cell c shows image cell c + d/cell: moving it by +d/cell puts it there.
        m, seen = _move(m, dy // cell, dx // cell), _move(seen, dy // cell, dx // cell)
        total = m if total is None else total + m
        count = seen if count is None else count + seen
    assert total is not None and count is not None  # the image itself is always a view
    mean = total / count  # the image's own view covers every cell: count ≥ 1
    return mean / mean.sum(dim=(-2, -1), keepdim=True)


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, heads, h, w) maps smoothed by a Gaussian of σ = `sigma` cells, per head, and each
    normalised to sum to 1 again.

    Truncated at 2σ (scipy's `gaussian_filter(..., truncate=2)`, `mode="nearest"`): separable,
    edges replicated so that mass near the border is not lost to zeros. A grouped convolution
    per head keeps the ONNX graph free of data-dependent reshapes (see EmbedAttention.forward).
    """
    if sigma <= 0:
        return maps
    r = int(2 * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    heads = maps.shape[1]
    out = F.pad(maps, (r, r, r, r), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, 1, -1).expand(heads, 1, 1, -1), groups=heads)
    out = F.conv2d(out, g.view(1, 1, -1, 1).expand(heads, 1, -1, 1), groups=heads)
    return out / out.sum(dim=(-2, -1), keepdim=True)


class EmbedAttention(nn.Module):
    """images (B, 3, H, W) → (embedding (B, D), attention (B, heads, h, w)).

    With the default views the embedding is exactly `model(images)` of a timm ViT built with
    num_classes=0 and global_pool="token": the CLS token after the final norm, before any head —
    what the DINO, DINOv2 and DINOv3 k-NN evaluations use. With more views (see
    core.package.EmbedViews) it is the mean of the views' unit CLS tokens, all views in one
    batch, and the attention the mean of the views' maps brought back onto the image
    (`stitch_maps`): mirror-symmetric with the mirror, on a finer grid with sub-patch moves;
    smoothed on its grid where the views ask for it (`smooth_maps`).

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
        embedding, attn = self._views(images)
        return embedding, smooth_maps(attn, self.views.smooth)

    def _views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        patch = self.model.patch_embed.patch_size[0]
        return embedding, stitch_maps(attn, n, self.views, patch)

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
