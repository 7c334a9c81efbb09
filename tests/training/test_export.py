import dataclasses
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from core import package
from core.vit import EmbedAttention, build_vit, smooth_maps
from dinoserve.cli import main
from training import checkpoint
from training.backbone import backbone_kwargs
from training.config import load_config
from training.export import QuantizeOptions, export_run, import_published
from training.onnx_export import ExportError, check_images


def test_export_package_matches_the_run(micro_run, micro_package):
    cfg = load_config(micro_run / "config.yaml")
    meta = package.verify(micro_package)
    assert package.current_version(micro_package.parent) == micro_package.name
    assert set(meta.files) == {
        package.ONNX_FP32,
        package.ONNX_INT8,
        package.WEIGHTS,
        "MODEL_CARD.md",
        "attention.png",
    }
    assert meta.provenance["config_hash"] == cfg.digest()
    assert meta.provenance["run_dir"] == str(micro_run.resolve())
    assert meta.evaluation["steps"] == 2
    assert (meta.img_size, meta.patch_size, meta.grid) == (32, 4, (8, 8))
    assert (meta.embed_dim, meta.num_heads, meta.crop_pct) == (32, 2, cfg.eval.crop_pct)
    assert max(meta.parity.values()) <= 1e-4
    assert meta.onnx["int8"].min_cosine >= 0.995

    # the ONNX graph, checked independently of the exporter's own check: dynamic batch,
    # and the teacher backbone of last.pt through PyTorch on the same images
    model = onnx.load(micro_package / package.ONNX_FP32)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["embedding", "attention"]
    teacher = checkpoint.load(micro_run / "last.pt")["teacher"]
    vit = build_vit(cfg.model.arch, backbone_kwargs(cfg.model))
    vit.load_state_dict({k[9:]: v for k, v in teacher.items() if k.startswith("backbone.")})
    x = check_images(32, meta.mean, meta.std, meta.crop_pct, seed=5)["real"][:3]
    sess = ort.InferenceSession(micro_package / package.ONNX_FP32)
    emb, att = sess.run(None, {"images": x})
    with torch.no_grad():
        ref_emb, ref_att = EmbedAttention(vit)(torch.from_numpy(x))
    np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)
    np.testing.assert_allclose(att, ref_att.numpy(), atol=1e-4)
    assert att.shape == (3, 2, 8, 8)


def test_cli_export_switches_current_and_keeps_old_versions(micro_run, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["export", str(micro_run), "--name", "m", "--models-dir", str(models)]) == 0
    first = package.current_version(models / "m")
    assert "CURRENT" in capsys.readouterr().out
    out = export_run(micro_run, models, "m")
    assert package.list_versions(models / "m") == sorted([first, out.name])
    assert package.current_version(models / "m") == out.name
    assert main(["export", str(tmp_path / "nope"), "--name", "m", "--models-dir", str(models)]) == 2


def test_failed_check_writes_nothing(micro_run, tmp_path, monkeypatch):
    from training import export

    models = tmp_path / "models"
    strict = functools.partial(export.check_parity, atol=0.0)
    monkeypatch.setattr(export, "check_parity", strict)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_run(micro_run, models, "m")
    assert list((models / "m").iterdir()) == []  # no version, no staging folder, no CURRENT


def test_int8_is_dropped_when_too_far_from_fp32(micro_run, tmp_path):
    strict = QuantizeOptions(min_cosine=1.0)  # no int8 model is exactly fp32
    out = export_run(micro_run, tmp_path, "m", quantize="int8", quant=strict)
    meta = package.verify(out)
    assert set(meta.onnx) == {"fp32"} and not (out / package.ONNX_INT8).exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_import_timm_from_a_local_state_dict(tmp_path, suffix):
    # ViT-S/16-shaped (2 blocks, to stay fast) under the DINO pretrained tag, random weights
    name, kwargs = "vit_small_patch16_224.dino", {"depth": 2}
    torch.manual_seed(0)
    src = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    weights = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), weights)
    else:
        save_file(src.state_dict(), weights)
    out = import_published(name, tmp_path / "models", "dino", weights, timm_kwargs=kwargs)
    meta = package.verify(out)
    assert (meta.arch, meta.img_size, meta.grid, meta.embed_dim) == (name, 224, (14, 14), 384)
    assert meta.crop_pct == 0.875 and meta.mean == (0.485, 0.456, 0.406)
    assert meta.provenance["source"] == "timm"
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    emb = ort.InferenceSession(out / package.ONNX_FP32).run(["embedding"], {"images": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(emb, src.eval()(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_import_timm_refuses_weights_of_another_model(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), weights)
    argv = ["import-timm", "vit_small_patch16_224.dino", "--weights", str(weights)]
    assert main([*argv, "--name", "x", "--models-dir", str(tmp_path)]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert package.list_versions(tmp_path / "x") == []


def test_package_carries_a_model_card_and_attention_picture(micro_package):
    from PIL import Image

    from core.package import read_meta, verify

    meta = verify(micro_package)  # the card and picture are hashed like every other file
    assert {"MODEL_CARD.md", "attention.png"} <= set(meta.files)
    card = (micro_package / "MODEL_CARD.md").read_text()
    for fact in (meta.arch, meta.provenance["config_hash"], "Evaluation", "cpu", "attention.png"):
        assert str(fact) in card, fact
    with Image.open(micro_package / "attention.png") as pic:
        heads = read_meta(micro_package).num_heads
        assert pic.size == (128 * (heads + 2), 128 * 3)


def test_int8_export_keeps_the_quantiser_quiet(micro_package, tmp_path, caplog):
    import logging

    from training.export import quiet_root_info
    from training.onnx_export import quantize_int8

    meta = package.read_meta(micro_package)
    real = check_images(meta.img_size, meta.mean, meta.std, meta.crop_pct)["real"]
    with caplog.at_level(logging.INFO):
        quantize_int8(micro_package / package.ONNX_FP32, tmp_path / "loud.onnx", real)
    loud = [r for r in caplog.records if r.name == "root" and r.levelno == logging.INFO]
    assert loud, "the quantiser logs on the root logger (else this test checks nothing)"
    caplog.clear()
    with caplog.at_level(logging.INFO), quiet_root_info():
        quantize_int8(micro_package / package.ONNX_FP32, tmp_path / "quiet.onnx", real)
        logging.getLogger("training.export").info("ours stays")
    assert [r.getMessage() for r in caplog.records] == ["ours stays"]


def test_quantize_options_are_the_settings_defaults():
    """The export's options default to DINOSERVE_QUANTIZE__*'s, field for field: the CLI
    passes `QuantizeOptions(**settings.quantize.model_dump())`."""
    from core.settings import QuantizeSettings

    assert dataclasses.asdict(QuantizeOptions()) == QuantizeSettings().model_dump()


def _run_with_views(micro_run, tmp_path, views: str):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for f in ("last.pt", "summary.json"):
        shutil.copyfile(micro_run / f, run / f)
    cfg = load_config(micro_run / "config.yaml", [f"eval.views={views}"], run=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return run


def test_export_bakes_the_runs_views_into_both_engines(micro_run, micro_package, tmp_path):
    from core.engine_choice import load_engine
    from core.settings import InferenceSettings

    run = _run_with_views(micro_run, tmp_path, "{flip: true, shift: 2, smooth: 1.5}")
    pkg = export_run(run, tmp_path / "models", "v", quantize="int8")
    meta = package.verify(pkg)
    assert meta.views == package.EmbedViews(flip=True, shift=2, smooth=1.5)
    assert meta.views.count == 10
    # onnxruntime's quantiser infers every shape of the views' graph first (it once could not)
    assert meta.onnx["int8"].min_cosine >= 0.995
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "over 10 views" in card and "map grid 16 × 16 of 2-px cells" in card
    assert "smoothed by a Gaussian of σ = 1.5 cells" in card
    # moves of 2 px on 8-px patches stitch a map of 2-px cells: 16 × 16 over the 32-px input
    assert meta.grid == (16, 16) and meta.map_cell == 2
    x = check_images(32, meta.mean, meta.std, meta.crop_pct, seed=5)["real"][:3]
    settings = InferenceSettings(intra_op_threads=1)
    ort_engine, torch_engine = (load_engine(pkg, r, settings) for r in ("onnxruntime", "torch"))
    ort_emb = ort_engine.embed(x)
    np.testing.assert_allclose(ort_emb, torch_engine.embed(x), atol=1e-4)
    np.testing.assert_allclose(ort_engine.attention(x), torch_engine.attention(x), atol=1e-5)
    assert ort_engine.attention(x).shape == (3, meta.num_heads, 16, 16)
    # the graph smooths the stitched map: the same views without smoothing, smoothed here
    unsmoothed = EmbedAttention(torch_engine.net.model, package.EmbedViews(flip=True, shift=2))
    with torch.no_grad():
        raw = unsmoothed(torch.from_numpy(x))[1]
    np.testing.assert_allclose(ort_engine.attention(x), smooth_maps(raw, 1.5).numpy(), atol=1e-5)
    int8_settings = InferenceSettings(intra_op_threads=1, onnx_variant="int8")
    int8 = load_engine(pkg, "onnxruntime", int8_settings)
    assert int8.variant == "int8" and int8.attention(x).shape == (3, meta.num_heads, 16, 16)
    # the mirror is one of the views: an image and its mirror get one embedding
    mirrored = load_engine(pkg, "onnxruntime", settings).embed(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(mirrored, ort_emb, atol=1e-4)
    plain = load_engine(micro_package, "onnxruntime", settings)  # the same run, no views
    assert plain.meta.views.count == 1
    assert not np.allclose(plain.embed(x), ort_emb, atol=1e-3)


def test_views_are_checked_against_the_input_size(micro_run):
    from training.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.views\.shift must be less than half"):
        load_config(micro_run / "config.yaml", ["eval.views.shift=16"], run=True)
    with pytest.raises(ConfigError, match=r"eval\.views\.flop"):
        load_config(micro_run / "config.yaml", ["eval.views.flop=true"], run=True)


def test_cli_export_views_flag_overrides_the_run(micro_run, tmp_path, capsys):
    models = tmp_path / "models"
    args = ["export", str(micro_run), "--name", "m", "--models-dir", str(models)]
    assert main([*args, "--views", "flip"]) == 0
    assert package.read_meta(models / "m" / package.current_version(models / "m")).views == (
        package.EmbedViews(flip=True)
    )
    with pytest.raises(SystemExit) as exc:
        main([*args, "--views", "flip,shift=x"])
    assert exc.value.code == 2
    assert "'shift=x' is not flip, shift=N, smooth=S or none" in capsys.readouterr().err
    assert main([*args, "--views", "flip,shift=4,smooth=1.25"]) == 0
    assert package.read_meta(models / "m" / package.current_version(models / "m")).views == (
        package.EmbedViews(flip=True, shift=4, smooth=1.25)
    )
    capsys.readouterr()
    for bad, why in (("smooth=x", "is not flip"), ("smooth=9", "less than or equal to 4")):
        with pytest.raises(SystemExit):
            main([*args, "--views", bad])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("dinoserve export: error: argument --views:") and why in last
