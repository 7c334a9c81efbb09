"""The device run's CPU rehearsal (bench/device/gpu_train.py) and the way back
(bench/device/ship_backbone.py), with a micro model on a small synthetic stand-in for CIFAR."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.device import gpu_train, ship_backbone
from core import package
from core.engines import OrtEngine
from core.settings import InferenceSettings
from core.torch_engine import TorchEngine

MICRO = [
    "run.device=cpu",
    "run.compile=false",
    "data.num_workers=0",
    "data.batch_size=16",
    "data.holdout_per_class=4",
    "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "head.out_dim=64",
    "head.hidden_dim=64",
    "head.bottleneck_dim=32",
    "crops.local_number=2",
    "eval.batch_size=64",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def device_out(tmp_path_factory):
    """What the device run returns ($OUT), from the rehearsal: calibration, then training."""
    tmp = tmp_path_factory.mktemp("gpu_train")
    tar = gpu_train.fake_cifar(tmp / "fake-cifar10.tar.gz", per_class=12)
    out = tmp / "out"
    report = gpu_train.main(
        [
            "cifar",
            "--data",
            str(tar),
            "--run",
            str(tmp / "run"),
            "--out",
            str(out),
            "--cache",
            str(tmp / "cache"),
            "--budget-s",
            "30",
            "--cal-warmup",
            "1",
            "--cal-steps",
            "2",
            *MICRO,
        ]
    )
    return tar, out, report


def test_rehearsal_fits_the_budget_and_returns_an_fp16_backbone(device_out):
    _, out, report = device_out
    assert report["calibration"]["timed_steps"] >= 1 and report["calibration"]["img_per_s"] > 0
    assert 1 <= report["epochs_planned"] <= 100
    # 80 training images / batch 16 = 5 steps per epoch, all run, then evaluated once.
    assert report["step"] == 5 * report["epochs_planned"] and report["knn_end"] is not None
    meta = json.loads((out / "cifar_backbone.json").read_text())
    assert meta["step"] == report["step"] and meta["device"] == "cpu"
    assert f"optim.epochs={report['epochs_planned']}" in meta["overrides"]
    part = torch.load(out / meta["parts"][0], map_location="cpu", weights_only=True)
    assert part["step"] == meta["step"]
    assert {v.dtype for v in part["weights"].values()} == {torch.float16}
    assert "patch_embed.proj.weight" in part["weights"]
    assert [p.name for p in out.glob("cifar_backbone-s*.pt")] == meta["parts"]
    assert (out / "cifar_metrics.jsonl").exists() and (out / "cifar_summary.json").exists()


def test_snapshot_parts_stay_under_the_limit(device_out, tmp_path, monkeypatch):
    _, out, _ = device_out
    run = out.parent / "run"
    monkeypatch.setattr(gpu_train, "PART_BYTES", 4096)  # force several parts
    meta = gpu_train.write_snapshot(run, tmp_path)
    assert len(meta["parts"]) > 1
    _, _, weights = ship_backbone.load_snapshot(tmp_path)
    whole = torch.load(
        out / json.loads((out / "cifar_backbone.json").read_text())["parts"][0], weights_only=True
    )["weights"]
    assert weights.keys() == whole.keys()
    assert all(torch.equal(weights[k], whole[k]) for k in whole)


def test_ship_backbone_packages_compacts_and_evaluates(device_out, tmp_path):
    tar, out, _ = device_out
    models = tmp_path / "models"
    pkg = ship_backbone.main(
        [
            str(out),
            "--data",
            str(tar),
            "--models-dir",
            str(models),
            "--name",
            "shipped",
            "--holdout",
            "4",
            "--cache",
            str(tmp_path / "cache"),
            "--workers",
            "0",
        ]
    )
    assert package.resolve(models, "shipped") == pkg  # CURRENT names it
    meta = package.verify(pkg)
    ev = meta.evaluation
    assert ev["memory"] == 80 and ev["queries"] == 40 and ev["k"] == 20
    assert 0 <= ev["knn_start"] <= 100 and 0 <= ev["knn_end"] <= 100
    assert meta.provenance["weights_dtype"] == "float16"
    assert meta.provenance["training"]["device"] == "cpu"
    assert {v.dtype for v in load_file(pkg / package.WEIGHTS).values()} == {torch.float16}
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "attention_cifar10.png" in card and "same model at initialisation" in card
    assert (pkg / ship_backbone.CIFAR_PICTURE).stat().st_size > 0
    # Both engines serve the compacted package, and agree.
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ort_emb = OrtEngine(pkg).embed(batch)
    torch_emb = TorchEngine(pkg, InferenceSettings(device="cpu")).embed(batch)
    np.testing.assert_allclose(ort_emb, torch_emb, atol=1e-4)
