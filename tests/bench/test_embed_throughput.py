import torch

from bench.embed_throughput import flops_per_image, gemm_peaks, int8_gemm_peaks, model_specs
from core.vit import build_vit


def analytic_flops(vit: torch.nn.Module, size: int) -> float:
    """2 FLOPs per multiply-add: patch projection, then per block qkv, attention products,
    output projection and the MLP."""
    d, patches = vit.embed_dim, vit.patch_embed.num_patches
    t = patches + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    patch = 2 * patches * 3 * vit.patch_embed.patch_size[0] ** 2 * d
    block = 2 * t * d * (3 * d + d) + 2 * 2 * t * t * d + 2 * 2 * t * d * hidden
    return patch + len(vit.blocks) * block


def test_flops_per_image_counts_attention_and_leaves_the_model_as_it_was():
    arch, kwargs = model_specs()["tiny"]
    vit = build_vit(arch, kwargs)
    size = vit.patch_embed.img_size[0]
    fused = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    flops = flops_per_image(vit, size)
    assert abs(flops - analytic_flops(vit, size)) / flops < 0.01
    assert [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")] == fused


def test_gemm_peaks_measures_both_runtimes():
    peaks = gemm_peaks(64, 32, 48, threads=1, seconds=0.05)
    assert set(peaks) == {"ORT MatMul", "torch matmul"}
    assert all(v > 0 for v in peaks.values())


def test_int8_gemm_peaks_time_each_int8_kernel():
    peaks = int8_gemm_peaks(64, 32, 48, threads=1, seconds=0.05)
    assert {"ORT QLinearMatMul u8s8", "ORT QLinearMatMul s8s8", "ORT MatMulInteger u8s8"} <= set(
        peaks
    )
    assert all(v > 0 for v in peaks.values())
