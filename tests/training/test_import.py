"""`dinoserve import`: DINO, DINOv2 (with and without registers) and DINOv3 from local files in
Meta's official key layout and in timm's, at the serving size (224 px unless asked).

The source models are tiny random-weight timm models (2 blocks of width 64); the official files
are written from them with the key names of facebookresearch/dinov2 and dinov3, so the package
must give back what timm's own model computes on the same pixels.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from core import package
from core.engine_choice import load_engine
from dinoserve.cli import main
from tests.core.test_attention import _reference_cls_attention
from training.export import import_published
from training.onnx_export import ExportError
from training.published import UnsupportedModel, WeightsMismatch, family_of

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}
PRETRAIN_SIZE = {14: 518, 16: 224, 8: 224}  # the size each family's table was trained at


def _source(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random timm model in the layout the family's weights come in (DINOv2 at 518 px)."""
    torch.manual_seed(seed)
    patch = 14 if "patch14" in arch else 8 if "patch8" in arch else 16
    vit = timm.create_model(
        arch,
        num_classes=0,
        global_pool="token",
        dynamic_img_size=True,
        img_size=PRETRAIN_SIZE[patch],
        **TINY,
    ).eval()
    with torch.no_grad():  # away from the init: zero biases and 1e-5 layer scales test nothing
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit


def official_dinov2(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's DINOv2 → Meta's keys: the CLS row back in the position table, `register_tokens`,
    a `mask_token` (facebookresearch/dinov2's DinoVisionTransformer)."""
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    dim = state["cls_token"].shape[-1]
    if "reg_token" in state:  # timm folds the official CLS row into cls_token
        row = torch.randn(1, 1, dim) * 0.1
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - row
        state["pos_embed"] = torch.cat([row, state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, dim)
    return state


def official_dinov3(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's Eva (DINOv3) → Meta's keys: `storage_tokens`, `ls1/ls2.gamma`, a masked qkv bias,
    the RoPE periods buffer and a `mask_token` (facebookresearch/dinov3)."""
    state, out = vit.state_dict(), {}
    dim = state["cls_token"].shape[-1]
    for k, v in state.items():
        if k.endswith("attn.q_bias"):
            v_bias = state[k.replace("q_bias", "v_bias")]
            base = k.replace("q_bias", "qkv.")
            out[base + "bias"] = torch.cat([v, torch.zeros_like(v), v_bias])
            ones, zeros = torch.ones_like(v), torch.zeros_like(v)
            out[base + "bias_mask"] = torch.cat([ones, zeros, ones])
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        out[k.replace("gamma_2", "ls2.gamma")] = v.clone()
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.arange(1, 9, dtype=torch.float32)
    return out


CASES = [
    # (timm name with tag, layout of the file)
    ("vit_small_patch16_224.dino", "official"),  # DINO's own files already have timm's keys
    ("vit_small_patch8_224.dino", "official"),
    ("vit_small_patch14_dinov2.lvd142m", "official"),
    ("vit_small_patch14_reg4_dinov2.lvd142m", "official"),
    ("vit_small_patch14_reg4_dinov2.lvd142m", "timm"),
    ("vit_small_patch16_dinov3.lvd1689m", "official"),
    ("vit_small_patch16_dinov3_qkvb.lvd1689m", "official"),
    ("vit_small_patch16_dinov3_qkvb.lvd1689m", "timm"),
    ("vit_small_plus_patch16_dinov3.lvd1689m", "official"),
]


def _write(vit: torch.nn.Module, arch: str, layout: str, path) -> None:
    family = family_of(arch).name
    if layout == "timm" or family == "DINO":
        state = vit.state_dict()
    else:
        state = official_dinov2(vit) if family == "DINOv2" else official_dinov3(vit)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


@pytest.mark.parametrize(("arch", "layout"), CASES)
def test_import_gives_back_timms_model(tmp_path, arch, layout):
    src = _source(arch)
    weights = tmp_path / ("w.pth" if layout == "official" else "w.safetensors")
    _write(src, arch, layout, weights)
    out = import_published(arch, tmp_path / "m", "pub", weights, "int8", timm_kwargs=TINY)
    meta = package.verify(out)
    patch = meta.patch_size
    assert meta.img_size == 224 and meta.grid == (224 // patch, 224 // patch)
    assert meta.timm_kwargs["img_size"] == 224 and meta.crop_pct == 0.875
    assert meta.provenance["family"] == family_of(arch).name
    assert not (out.parent / package.CURRENT).exists()  # an import changes nothing by default
    assert max(meta.parity.values()) <= 1e-4 and meta.onnx["int8"].min_cosine >= 0.99

    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    emb, att = ort.InferenceSession(out / package.ONNX_FP32).run(None, {"images": x})
    with torch.no_grad():  # timm's own model on the same pixels (its table resampled by timm)
        ref_emb, ref_att = _reference_cls_attention(src, torch.from_numpy(x))
    np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)
    # CLS → patches only: registers and storage tokens are not on the map
    assert att.shape == (2, 2, *meta.grid) and att[0, 0].size == (224 // patch) ** 2
    np.testing.assert_allclose(att.reshape(2, 2, -1), ref_att.numpy(), atol=1e-5)
    np.testing.assert_allclose(att.sum((-2, -1)), 1.0, atol=1e-5)
    q = ort.InferenceSession(out / package.ONNX_INT8).run(["embedding"], {"images": x})[0]
    cos = (q * emb).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(emb, axis=1)
    assert cos.min() >= 0.99


def test_img_size_sets_the_grid_and_the_preprocessing(tmp_path, capsys):
    arch = "vit_small_patch14_reg4_dinov2.lvd142m"
    weights = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    _write(_source(arch), arch, "official", weights)
    out = import_published(arch, tmp_path / "m", "pub", weights, timm_kwargs=TINY, img_size=112)
    meta = package.verify(out)
    assert (meta.img_size, meta.grid, meta.timm_kwargs["img_size"]) == (112, (8, 8), 112)
    for kind in ("onnxruntime", "torch"):
        engine = load_engine(out, kind)
        batch = np.stack([engine.preprocess(Image.new("RGB", (300, 200), "red"))] * 2)
        assert batch.shape == (2, 3, 112, 112)
        assert engine.attention(batch).shape == (2, 2, 8, 8)
    with pytest.raises(UnsupportedModel, match=r"not a multiple of .* patch \(14\)"):
        import_published(arch, tmp_path / "m", "pub", weights, timm_kwargs=TINY, img_size=100)


def test_an_import_with_views_serves_them_on_both_engines(tmp_path):
    # DINOv3: RoPE and storage tokens, the family furthest from the plain ViT.
    arch = "vit_small_patch16_dinov3.lvd1689m"
    weights = tmp_path / "dinov3_vits16_pretrain.pth"
    _write(_source(arch), arch, "official", weights)
    views = package.EmbedViews(flip=True, shift=8)
    out = import_published(
        arch, tmp_path / "m", "pub", weights, timm_kwargs=TINY, img_size=64, views=views
    )
    meta = package.verify(out)
    assert meta.views == views
    # 8-px moves of 16-px patches: a map of 8-px cells, 8 × 8 over the 64-px input
    assert meta.grid == (8, 8) and meta.map_cell == 8
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    mirrored = np.ascontiguousarray(x[..., ::-1])
    ort_engine, torch_engine = (load_engine(out, kind) for kind in ("onnxruntime", "torch"))
    emb, att = ort_engine.embed(x), ort_engine.attention(x)
    np.testing.assert_allclose(emb, torch_engine.embed(x), atol=1e-4)
    np.testing.assert_allclose(att, torch_engine.attention(x), atol=1e-5)
    assert att.shape == (2, meta.num_heads, 8, 8)
    np.testing.assert_allclose(ort_engine.embed(mirrored), emb, atol=1e-4)
    np.testing.assert_allclose(ort_engine.attention(mirrored), att[..., ::-1], atol=1e-5)
    too_far = package.EmbedViews(shift=32)  # half the input: a view of edge pixels only
    with pytest.raises(ExportError, match=r"views\.shift 32 must be less than half the input"):
        import_published(
            arch, tmp_path / "m", "pub", weights, timm_kwargs=TINY, img_size=64, views=too_far
        )


def test_cli_refuses_a_file_of_another_depth_in_one_line(tmp_path, capsys):
    arch = "vit_small_patch16_dinov3.lvd1689m"
    one_block = timm.create_model(arch, num_classes=0, global_pool="token", depth=1)
    weights = tmp_path / "dinov3_vits16_pretrain.safetensors"
    save_file({k: v.contiguous() for k, v in one_block.state_dict().items()}, weights)
    models = tmp_path / "models"
    argv = [arch, "--weights", str(weights), "--name", "v3", "--models-dir", str(models)]
    for command in ("import", "import-timm"):  # the old name stays an alias
        assert main([command, *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "(DINOv3)" in err and "missing blocks.1." in err
    assert package.list_versions(models / "v3") == []


def test_the_resolved_name_is_the_newest_version_without_current(tmp_path):
    arch = "vit_small_patch16_224.dino"
    weights = tmp_path / "dino_deitsmall16_pretrain.pth"
    _write(_source(arch), arch, "official", weights)
    models = tmp_path / "models"
    first = import_published(arch, models, "dino", weights, timm_kwargs=TINY)
    assert package.resolve(models, "dino") == first  # by name, though never activated
    assert package.known_models(models) == []  # and never the default of other commands
    second = import_published(arch, models, "dino", weights, timm_kwargs=TINY, img_size=112)
    assert package.resolve(models, "dino") == second
    third = import_published(arch, models, "dino", weights, timm_kwargs=TINY, activate=True)
    assert package.current_version(models / "dino") == third.name


def _mismatch(tmp_path, arch: str, state: dict) -> str:
    weights = tmp_path / "w.pth"
    torch.save(state, weights)
    with pytest.raises(WeightsMismatch) as info:
        import_published(arch, tmp_path / "m", "x", weights, timm_kwargs=TINY)
    assert package.list_versions(tmp_path / "m" / "x") == []
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_dinov3_file_for_a_dinov2_name_says_what_was_expected(tmp_path):
    v3 = official_dinov3(_source("vit_small_patch16_dinov3.lvd1689m"))
    msg = _mismatch(tmp_path, "vit_small_patch14_reg4_dinov2.lvd142m", v3)
    assert "does not fit vit_small_patch14_reg4_dinov2.lvd142m (DINOv2)" in msg
    assert "register_tokens" in msg and "reg_token" in msg  # the keys it expected
    assert "looks like DINOv3 (official layout)" in msg and "unexpected storage_tokens" in msg


def test_registers_are_not_optional(tmp_path):
    plain = official_dinov2(_source("vit_small_patch14_dinov2.lvd142m"))
    msg = _mismatch(tmp_path, "vit_small_patch14_reg4_dinov2.lvd142m", plain)
    assert "(DINOv2)" in msg and "the file has 0 register/storage tokens, " in msg
    assert msg.endswith("has 4")


def test_dinov3_biases_are_not_dropped_silently(tmp_path):
    v3 = official_dinov3(_source("vit_small_patch16_dinov3_qkvb.lvd1689m"))
    msg = _mismatch(tmp_path, "vit_small_patch16_dinov3.lvd1689m", v3)
    assert "import it as vit_small_patch16_dinov3_qkvb.lvd1689m" in msg


def test_not_a_vit_is_refused_before_anything_is_read(tmp_path, capsys):
    argv = ["import", "convnext_tiny.dinov3_lvd1689m", "--weights", str(tmp_path / "none.pth")]
    assert main([*argv, "--name", "c", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "timm convnext model, not a ViT with a CLS token" in err and err.count("\n") == 1
    with pytest.raises(UnsupportedModel, match="timm has no model"):
        import_published("vit_nope", tmp_path, "x", tmp_path / "none.pth")


def test_an_unreadable_file_is_one_line(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMismatch, match="not a readable state dict"):
        import_published("vit_small_patch16_224.dino", tmp_path, "x", weights, timm_kwargs=TINY)
