"""Static int8 (training/static_int8.py) as a package variant, behind the accuracy guard."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from core import package
from core.engine_choice import load_engine
from core.settings import InferenceSettings
from core.vit import build_vit
from evaluation.real_images import Preprocessing, load_real_images
from evaluation.variant_guard import MIN_ATTENTION_COSINE, check_variant, run_forward
from training.export import QuantizeOptions, export_run, write_package
from training.onnx_export import ort_session
from training.static_int8 import attention_nodes, quantize_int8_static


def _forward(path):
    sess = ort_session(path)
    return lambda x: tuple(sess.run(["embedding", "attention"], {"images": x}))


def test_static_int8_is_written_beside_fp32_and_dynamic_with_its_guard(
    micro_run, synthetic_dir, tmp_path
):
    out = export_run(
        micro_run, tmp_path, "m", quantize=["int8", "int8-static"], calibration=synthetic_dir
    )
    meta = package.verify(out)
    assert list(meta.onnx) == ["fp32", "int8", "int8-static"]
    static = meta.onnx["int8-static"]
    assert static.file == package.ONNX_INT8_STATIC and (out / static.file).is_file()
    # the guard ran on labelled held-out images: cosine and k-NN figures are recorded
    g = static.guard
    assert g["passed"] and g["min_cosine"] >= 0.995 and g["min_attention_cosine"] >= 0.99
    assert g["knn_queries"] > 0 and g["knn_top1"] >= g["knn_top1_fp32"] - 0.5
    assert meta.onnx["int8"].guard["knn_queries"] == g["knn_queries"]
    # QDQ: weights int8 per channel, the attention path left in float
    model = onnx.load(out / static.file)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    op_of = {n.name: n.op_type for n in model.graph.node}
    assert static.float_nodes and {op_of[n] for n in static.float_nodes} == {"Softmax", "MatMul"}
    per_channel = [
        t for t in model.graph.initializer if t.name.endswith("_scale") and len(t.dims) == 1
    ]
    assert per_channel, "per-channel weight scales"
    # served by the engine like the other variants, close to fp32
    s = InferenceSettings(intra_op_threads=1, onnx_variant="int8-static")
    x = load_real_images(
        synthetic_dir, Preprocessing(meta.img_size, meta.mean, meta.std, meta.crop_pct), [6]
    )[0].images
    got = load_engine(out, "onnxruntime", s).embed(x)
    ref = load_engine(out, "onnxruntime", InferenceSettings(intra_op_threads=1)).embed(x)
    assert (got * ref).sum(axis=1).min() >= 0.995


def test_static_int8_needs_calibration_images(tmp_path):
    from training.onnx_export import ExportError

    vit = build_vit("vit_small_patch16_224", _TINY)
    meta = {"arch": "vit_small_patch16_224", "timm_kwargs": _TINY, **_PREP}
    with pytest.raises(ExportError, match="--calibration"):
        write_package(vit, meta, tmp_path, "m", quantize="int8-static")
    assert list((tmp_path / "m").iterdir()) == []


def test_a_variant_failing_the_guard_is_not_written(micro_run, synthetic_dir, tmp_path):
    strict = QuantizeOptions(min_cosine=1.0)  # no int8 model is exactly fp32
    out = export_run(
        micro_run, tmp_path, "m", "int8-static", calibration=synthetic_dir, quant=strict
    )
    assert set(package.verify(out).onnx) == {"fp32"}
    assert not (out / package.ONNX_INT8_STATIC).exists()


_TINY = {
    "num_classes": 0,
    "global_pool": "token",
    "dynamic_img_size": True,
    "img_size": 64,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 2,
}
_PREP = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.875}


def test_leaving_the_attention_path_in_float_keeps_the_attention_output(tmp_path, synthetic_dir):
    # Sharper attention than a random init has, as trained ViTs have: q and k scaled up, so each
    # CLS row concentrates on a few patches (the case where an int8 softmax loses the rest).
    torch.manual_seed(0)
    vit = build_vit("vit_small_patch16_224", _TINY)
    with torch.no_grad():
        for blk in vit.blocks:
            blk.attn.qkv.weight[: 2 * _TINY["embed_dim"]] *= 6.0
    meta = {"arch": "vit_small_patch16_224", "timm_kwargs": _TINY, **_PREP}
    pkg = write_package(vit, meta, tmp_path / "models", "peaky")
    fp32 = pkg / package.ONNX_FP32
    cal, held = load_real_images(
        synthetic_dir, Preprocessing(64, _PREP["mean"], _PREP["std"], 0.875), [48, 64]
    )
    names = attention_nodes(onnx.load(fp32))
    # 4 blocks × (softmax, q·kᵀ, softmax·v) + the CLS map's (q·kᵀ, softmax)
    assert len(names) == 4 * 3 + 2
    ref = run_forward(_forward(fp32), held.images)
    results = {}
    for exclude in (True, False):
        out = tmp_path / f"static-{exclude}.onnx"
        assert bool(quantize_int8_static(fp32, out, cal.images, exclude)) == exclude
        results[exclude] = check_variant(ref, _forward(out), held.images)
    kept, all_int8 = results[True], results[False]
    assert kept.min_attention_cosine >= MIN_ATTENTION_COSINE
    # quantising the softmax costs the attention output several times the error
    assert 1 - all_int8.min_attention_cosine > 3 * (1 - kept.min_attention_cosine)
    assert np.isfinite(kept.min_cosine) and kept.min_cosine >= 0.995
