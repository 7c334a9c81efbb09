"""`dinoserve train --init`: continued pretraining from a package or from published weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from core import package
from dinoserve.cli import main
from tests.conftest import MICRO, TINY_PRESET
from tests.training.test_import import TINY, _source, official_dinov3
from training.config import ConfigError, load_config
from training.export import export_run
from training.init import fit_pos_embed, init_overrides
from training.synthetic import make_synthetic
from training.train import Trainer

NOT_THE_MODEL = [o for o in MICRO if not o.startswith("model.")]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_from_a_package_keeps_its_knn_and_exports(micro_package, tmp_path):
    data = make_synthetic(tmp_path / "shapes", 30, 32, seed=2)
    models = tmp_path / "models"
    overrides = init_overrides(str(micro_package), None, models)
    cfg = load_config(
        TINY_PRESET,
        [
            *overrides,
            *NOT_THE_MODEL,
            f"data.train={data}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.holdout_per_class=10",  # 100 queries, 200 images of memory
            "eval.at_start=true",
            "optim.epochs=1",
        ],
    )
    meta = package.read_meta(micro_package)
    assert (cfg.model.arch, cfg.model.patch_size, cfg.model.img_size) == (meta.arch, 4, 32)
    trainer = Trainer(cfg, tmp_path / "run")
    weights = load_file(micro_package / package.WEIGHTS)
    assert _same(trainer.model.teacher.backbone.state_dict(), weights)
    assert _same(trainer.model.student.backbone.state_dict(), weights)
    result = trainer.fit()
    # no collapse at the start: the adapted teacher is not worse than where it began (100
    # queries: one query is a point, a few points are noise)
    assert result.knn_start is not None and result.knn_end >= result.knn_start - 8
    out = export_run(tmp_path / "run", models, "adapted")
    card = package.verify(out)
    assert card.arch == meta.arch and card.grid == meta.grid
    # the package says where it started, and its model card too; a run from scratch does not
    assert card.provenance["init"] == str(micro_package) and meta.provenance["init"] is None
    assert f"| started from | {micro_package} |" in (out / "MODEL_CARD.md").read_text()
    assert load_config(tmp_path / "run" / "config.yaml", run=True).model.init == str(micro_package)


def test_a_package_continues_at_a_larger_input_with_its_table_resampled(micro_package, tmp_path):
    data = make_synthetic(tmp_path / "shapes", 4, 32, seed=2)
    models = tmp_path / "models"
    cfg = load_config(
        TINY_PRESET,
        [
            *init_overrides(str(micro_package), None, models),
            "model.img_size=48",  # after --init: the package's 8 × 8 grid becomes 12 × 12
            *NOT_THE_MODEL,
            "crops.global_size=48",
            "crops.local_size=24",
            f"data.train={data}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "run.max_steps=1",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    weights = load_file(micro_package / package.WEIGHTS)
    got = trainer.model.teacher.backbone.state_dict()
    assert got["pos_embed"].shape == (1, 1 + 12 * 12, weights["pos_embed"].shape[2])
    # the CLS entry is kept, the patches' are the package's table resampled (bicubic, timm's)
    assert torch.equal(got["pos_embed"][:, :1], weights["pos_embed"][:, :1])
    grid = weights["pos_embed"][:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    up = torch.nn.functional.interpolate(grid, (12, 12), mode="bicubic", antialias=True)
    up = up.permute(0, 2, 3, 1).reshape(1, 144, -1)
    assert torch.allclose(got["pos_embed"][:, 1:], up, atol=1e-5)
    rest = {k: v for k, v in weights.items() if k != "pos_embed"}
    assert _same({k: got[k] for k in rest}, rest)
    assert trainer.fit().steps == 1
    out = export_run(tmp_path / "run", models, "larger")
    assert package.verify(out).img_size == 48 and package.verify(out).grid == (12, 12)


def test_a_table_that_is_no_grid_of_the_package_is_refused():
    state = {"pos_embed": torch.zeros(1, 10, 8)}
    with pytest.raises(ConfigError, match="fewer than a 4² grid"):
        fit_pos_embed(state, 4, 6)
    assert fit_pos_embed(state, 3, 3) is state


def test_train_from_official_dinov3_weights(tmp_path):
    arch = "vit_small_patch16_dinov3.lvd1689m"
    src = _source(arch)
    weights = tmp_path / "dinov3_vits16_pretrain.pth"
    torch.save(official_dinov3(src), weights)
    data = make_synthetic(tmp_path / "shapes", 4, 32, seed=3)
    kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in TINY.items()) + "}"
    cfg = load_config(
        TINY_PRESET,
        [
            f"model.arch={arch}",
            "model.patch_size=16",
            "model.img_size=32",
            f"model.kwargs={kwargs}",
            f"model.init={arch}",
            f"model.init_weights={weights}",
            *NOT_THE_MODEL,
            "crops.local_size=16",
            f"data.train={data}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "run.max_steps=2",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert _same(trainer.model.teacher.backbone.state_dict(), src.state_dict())
    result = trainer.fit()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_a_convnext_is_refused_with_the_reason(tmp_path, capsys):
    data = make_synthetic(tmp_path / "shapes", 2, 32, seed=3)
    argv = ["train", "--init", "convnext_tiny.dinov3_lvd1689m", "--init-weights", "w.pth"]
    assert main([*argv, "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a ViT with a CLS token" in err
    assert "DINO head" in err and not (tmp_path / "run").exists()
