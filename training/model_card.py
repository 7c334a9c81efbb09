"""The model card written into every package: what the model is, where it came from, how good it
is, and a picture of its last-layer attention — so a shipped default explains itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image

from core.attention import attention_mask
from core.images import preprocess
from core.package import EmbedViews
from core.vit import EmbedAttention
from training.synthetic import draw_shape

CARD = "MODEL_CARD.md"
PICTURE = "attention.png"
TILE = 128  # pixels per tile of the picture


def _heat(maps: np.ndarray) -> np.ndarray:
    """(h, w) non-negative map → (h, w, 3) uint8 with the inferno colour map."""
    m = maps / max(float(maps.max()), 1e-12)
    return (matplotlib.colormaps["inferno"](m)[..., :3] * 255).astype(np.uint8)


def _tile(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr).resize((TILE, TILE), Image.Resampling.NEAREST)


@torch.no_grad()
def attention_picture(net: EmbedAttention, meta: dict[str, Any], img_size: int) -> Image.Image:
    """Rows of [image, one heat-map per head, the 0.6-mass mask of the head mean] for a few
    synthetic images."""
    rng = np.random.default_rng(7)
    rows = []
    for cls in (0, 6, 2):  # circle, star, triangle: shapes whose outline a mask should follow
        pic = draw_shape(cls, rng, img_size)
        x = preprocess(pic, img_size, meta["mean"], meta["std"], meta["crop_pct"])
        _, attn = net(torch.from_numpy(x)[None])
        attn = attn[0].float().numpy()  # (heads, h, w)
        mask = attention_mask(attn.mean(axis=0, keepdims=True), 0.6)[0]  # of the head mean
        tiles = [pic.resize((TILE, TILE), Image.Resampling.NEAREST)]
        tiles += [_tile(_heat(a)) for a in attn]
        tiles.append(_tile((mask[..., None] * np.array([255, 255, 255])).astype(np.uint8)))
        rows.append(tiles)
    out = Image.new("RGB", (TILE * len(rows[0]), TILE * len(rows)), "black")
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            out.paste(t, (c * TILE, r * TILE))
    return out


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items() if v not in (None, "", {})]
    return "\n".join(lines)


def write_card(
    stage: Path, meta: dict[str, Any], net: EmbedAttention, dims: dict[str, Any]
) -> None:
    """MODEL_CARD.md and attention.png in a package being staged (before hashing).

    Args:
        stage: the staging folder of the package.
        meta: model.json fields from the source (arch, provenance, evaluation, …).
        net: the exported network (embedding + attention).
        dims: img_size, patch_size, embed_dim, num_heads, grid and cell of the attention
            map, parity, onnx variants.
    """
    attention_picture(net, meta, dims["img_size"]).save(stage / PICTURE)
    prov, ev = meta.get("provenance", {}), meta.get("evaluation", {})
    train = prov.get("training", {})
    knn = ev.get("knn_end")
    model = {
        "architecture": f"`{meta['arch']}` (timm) {json.dumps(meta.get('timm_kwargs', {}))}",
        "input": f"{dims['img_size']} px, patch {dims['patch_size']}",
        "embedding": f"{dims['embed_dim']}-d CLS feature of the teacher backbone (pre-head)"
        + _views_text(meta.get("views")),
        "attention": f"{dims['num_heads']} head{'s' * (dims['num_heads'] != 1)}, last block, "
        f"CLS → patches, map grid "
        f"{dims['grid'][0]} × {dims['grid'][1]}"
        + _stitch_text(dims)
        + _smooth_text(meta.get("views")),
        "preprocessing": f"resize shorter side to img_size / {meta['crop_pct']}, centre crop, "
        f"normalise mean {meta['mean']} std {meta['std']}",
        "ONNX variants": ", ".join(dims["onnx"]),
        "parity ORT vs PyTorch (max abs)": dims.get("parity"),
    }
    source = {
        "source": prov.get("source"),
        "data": prov.get("data"),
        "run": prov.get("run_dir"),
        "started from": prov.get("init"),
        "config hash": prov.get("config_hash"),
        "steps": prov.get("step"),
        "epochs": train.get("epochs"),
        "batch (per process)": train.get("batch_size"),
        "crops": train.get("crops"),
        "training wall time": f"{train['wall_s']:.0f} s" if train.get("wall_s") else None,
        "device": train.get("device"),
        "weights": prov.get("weights"),
    }
    quality = {
        f"k-NN top-1 (k={ev.get('k')}, T={ev.get('temperature')})": f"{knn:.2f} %"
        if knn is not None
        else None,
        "same model at initialisation": f"{ev['knn_start']:.2f} %"
        if ev.get("knn_start") is not None
        else None,
    }
    text = (
        f"# Model card: {meta.get('name', '')}\n\nDINO self-distillation (Caron et al. 2021); the "
        "exact version, file hashes and creation time are in `model.json`.\n\n"
        f"## Model\n\n{_table(model)}\n\n## Training\n\n{_table(source)}\n\n"
        f"## Evaluation\n\n{_table(quality) if any(quality.values()) else 'not measured'}\n\n"
        f"## Attention\n\n![attention]({PICTURE})\n\nPer row: the image, the last layer's CLS "
        "attention of each head, and the patches that hold 60 % of the heads' mean attention.\n"
    )
    (stage / CARD).write_text(text)


def _views_text(views: EmbedViews | None) -> str:
    if views is None or views.count == 1:
        return ""
    parts = ["the image"]
    if views.shift:
        parts.append(f"moved ±{views.shift} px along each axis")
    if views.flip:
        parts.append("each mirrored")
    return f", the mean of its unit vector over {views.count} views ({', '.join(parts)})"


def _smooth_text(views: EmbedViews | None) -> str:
    if views is None or not views.smooth:
        return ""
    return f", smoothed by a Gaussian of σ = {views.smooth:g} cells"


def _stitch_text(dims: dict[str, Any]) -> str:
    cell = dims.get("cell", dims["patch_size"])
    if cell == dims["patch_size"]:
        return ""
    return f" of {cell}-px cells (the moved views' maps stitched)"
