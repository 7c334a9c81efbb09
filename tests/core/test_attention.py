import numpy as np
import pytest
import timm
import torch

from core.attention import attention_mask, kept_mass, upsample
from core.vit import EmbedAttention, smooth_maps


def test_mask_on_a_hand_made_map():
    att = np.array([[[0.5, 0.3], [0.1, 0.1]]])  # one head, 2×2 patches
    # ascending 0.1, 0.1, 0.3, 0.5 → cumsum 0.1, 0.2, 0.5, 1.0 → keep where > 0.4
    assert attention_mask(att, 0.6).tolist() == [[[True, True], [False, False]]]
    assert attention_mask(att, 1.0).all()


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_mask_keeps_the_requested_mass_with_the_fewest_patches(threshold):
    rng = np.random.default_rng(0)
    att = rng.dirichlet(np.full(49, 0.3), size=(4, 6)).reshape(4, 6, 7, 7)  # (N, heads, h, w)
    mask = attention_mask(att, threshold)
    mass = kept_mass(att, mask)
    assert mass.shape == (4, 6)
    assert (mass >= threshold - 1e-9).all()
    # minimal: dropping the smallest kept patch of any head falls below the threshold
    smallest = np.where(mask, att, np.inf).reshape(4, 6, -1).min(-1)
    assert (mass - smallest < threshold + 1e-9).all()


def test_mask_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        attention_mask(np.ones((1, 2, 2)), 0.0)


def test_upsample_by_the_patch_size():
    maps = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    up = upsample(maps, 4)
    assert up.shape == (1, 8, 12)
    assert up[0, 5, 9] == maps[0, 1, 2] and up[0, 0, 3] == maps[0, 0, 0]


def _reference_cls_attention(vit, x):
    """timm's own last-block attention matrix (non-fused path), captured at its dropout."""
    attn = vit.blocks[-1].attn
    attn.fused_attn = False
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        out = vit(x)
    finally:
        handle.remove()
        attn.fused_attn = True
    row = seen[0][:, :, 0, vit.num_prefix_tokens :]  # CLS → patches, (B, heads, P)
    return out, row / row.sum(-1, keepdim=True)


TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 224}


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [
        # the tiny preset's path: patch 4 on 32 px, NHWC patch tokens with dynamic_img_size
        (
            "vit_tiny_patch16_224",
            {
                "img_size": 32,
                "patch_size": 4,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
                "dynamic_img_size": True,
            },
            32,
        ),
        # ViT-S/16-shaped (2 blocks for speed) with register tokens to skip
        ("vit_small_patch16_224", {"depth": 2, "reg_tokens": 4, "dynamic_img_size": True}, 224),
        # DINOv2 with registers and DINOv3 (timm's Eva: RoPE on q and k, storage tokens, the
        # q/v biases beside a bias-free qkv), tiny, at 224 px
        ("vit_small_patch14_reg4_dinov2", TINY, 224),
        ("vit_small_patch16_dinov3", TINY, 224),
        ("vit_small_patch16_dinov3_qkvb", TINY, 224),
        ("vit_small_plus_patch16_dinov3", TINY, 224),
    ],
)
def test_wrapper_matches_timm(arch, kwargs, size):
    torch.manual_seed(0)
    vit = timm.create_model(arch, num_classes=0, global_pool="token", **kwargs).eval()
    with torch.no_grad():  # away from the init (zero biases, 1e-5 layer scales): a real test
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        emb, att = EmbedAttention(vit)(x)
        ref_emb, ref_att = _reference_cls_attention(vit, x)
    grid = vit.patch_embed.grid_size
    assert att.shape == (2, vit.blocks[-1].attn.num_heads, *grid)
    torch.testing.assert_close(emb, ref_emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att.flatten(2), ref_att, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(att.sum((-2, -1)), torch.ones(att.shape[:2]))


def _tiny_vit(size: int = 32):
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        global_pool="token",
        img_size=size,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
    ).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit


def test_views_average_the_unit_embeddings_of_each_view():
    from core.package import EmbedViews

    vit = _tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    views = EmbedViews(flip=True, shift=2)
    assert views.count == 10
    with torch.no_grad():
        emb, att = EmbedAttention(vit, views)(x)
        plain_emb = EmbedAttention(vit)(x)[0]
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
        moved = [x] + [
            padded[..., 2 + dy : 34 + dy, 2 + dx : 34 + dx]
            for dy, dx in ((0, -2), (0, 2), (-2, 0), (2, 0))
        ]
        by_hand = [vit(v) for v in moved] + [vit(v.flip(-1)) for v in moved]
    expected = torch.stack([torch.nn.functional.normalize(e, dim=-1) for e in by_hand]).mean(0)
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    # the map: every view's own map, mirrored back, on 2-px cells, moved back by its view's
    # offset, and averaged per cell over the views that saw it (shift and stitch)
    offsets = [(0, 0), (0, -2), (0, 2), (-2, 0), (2, 0)]
    with torch.no_grad():
        maps = [EmbedAttention(vit)(v)[1] for v in moved]
        maps += [EmbedAttention(vit)(v.flip(-1))[1].flip(-1) for v in moved]
    total, seen = np.zeros((3, 2, 16, 16)), np.zeros((16, 16))
    for (dy, dx), m in zip(offsets * 2, maps, strict=True):
        fine = m.numpy().repeat(4, -2).repeat(4, -1)  # view cell c shows image cell c + d/2
        for cy in range(16):
            for cx in range(16):
                vy, vx = cy - dy // 2, cx - dx // 2
                if 0 <= vy < 16 and 0 <= vx < 16:
                    total[..., cy, cx] += fine[..., vy, vx]
                    seen[cy, cx] += 1
    stitched = total / seen
    stitched /= stitched.sum((-2, -1), keepdims=True)
    assert att.shape == (3, 2, 16, 16)
    np.testing.assert_allclose(att.numpy(), stitched, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(att.sum((-2, -1)), torch.ones(att.shape[:2]))
    assert not torch.allclose(emb, plain_emb)
    # a mirror is among the views, so the embedding cannot tell an image from its mirror
    with torch.no_grad():
        mirrored, mirrored_att = EmbedAttention(vit, views)(x.flip(-1))
    torch.testing.assert_close(mirrored, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mirrored_att, att.flip(-1))


@pytest.mark.parametrize("shift", [3, 8])
def test_moves_that_are_not_a_fraction_of_the_patch_leave_the_map_on_the_patch_grid(shift):
    from core.package import EmbedViews

    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    assert EmbedViews(shift=shift).map_cell(8) == 8
    assert EmbedViews(shift=4).map_cell(8) == 4 and EmbedViews(shift=4).map_cell(14) == 14
    with torch.no_grad():
        plain = EmbedAttention(vit)(x)[1]
        mirror = EmbedAttention(vit)(x.flip(-1))[1].flip(-1)
        moved = EmbedAttention(vit, EmbedViews(shift=shift))(x)[1]
        both = EmbedAttention(vit, EmbedViews(flip=True, shift=shift))(x)[1]
    # the moved views' maps are not used: the map is the image's own, with its mirror's
    torch.testing.assert_close(moved, plain)
    torch.testing.assert_close(both, (plain + mirror) / 2)


def test_the_default_views_serve_the_raw_cls_feature():
    from core.package import EmbedViews

    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(EmbedAttention(vit, EmbedViews())(x)[0], vit(x))
    assert EmbedViews(flip=True).count == 2 and EmbedViews(shift=3).count == 5
    with pytest.raises(ValueError):
        EmbedViews(shift=-1)


@pytest.mark.parametrize("sigma", [0.5, 1.25, 2.0])
def test_smoothing_is_a_gaussian_with_edges_replicated_and_keeps_each_map_a_distribution(sigma):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    maps = rng.dirichlet(np.full(12 * 12, 0.2), size=(3, 2)).reshape(3, 2, 12, 12)
    got = smooth_maps(torch.from_numpy(maps), sigma).numpy()
    # scipy's separable filter, truncated at 2σ, edges replicated ("nearest"), per map
    ref = ndimage.gaussian_filter(maps, (0, 0, sigma, sigma), mode="nearest", truncate=2.0)
    ref /= ref.sum((-2, -1), keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert got.sum((-2, -1)) == pytest.approx(np.ones((3, 2)))
    assert smooth_maps(torch.from_numpy(maps), 0) is not None
    np.testing.assert_array_equal(smooth_maps(torch.from_numpy(maps), 0).numpy(), maps)


def test_smoothing_changes_the_map_only():
    from core.package import EmbedViews

    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb, att = EmbedAttention(vit, EmbedViews(flip=True, shift=4))(x)
        s_emb, s_att = EmbedAttention(vit, EmbedViews(flip=True, shift=4, smooth=1.0))(x)
        lone = EmbedAttention(vit, EmbedViews(smooth=1.0))(x)  # smoothing without other views
    torch.testing.assert_close(s_emb, emb)
    torch.testing.assert_close(s_att, smooth_maps(att, 1.0))
    torch.testing.assert_close(lone[0], vit(x))
    torch.testing.assert_close(lone[1], smooth_maps(EmbedAttention(vit)(x)[1], 1.0))
    # the mirror still makes the smoothed map mirror-symmetric in the image
    with torch.no_grad():
        mirrored = EmbedAttention(vit, EmbedViews(flip=True, shift=4, smooth=1.0))(x.flip(-1))[1]
    torch.testing.assert_close(mirrored, s_att.flip(-1))
    with pytest.raises(ValueError):
        EmbedViews(smooth=5)
