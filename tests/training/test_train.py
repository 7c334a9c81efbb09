import json
import logging
import math

import pytest
import torch

from training.meta_arch import DINO
from training.metrics import MetricsLog, TrainingDiverged
from training.train import Trainer, train


def test_short_run_writes_everything(micro_config, tmp_path):
    cfg = micro_config(
        "optim.epochs=2",
        "data.holdout_per_class=2",
        "eval.every_epochs=1",
        "eval.at_start=true",
        "run.tensorboard=true",
    )
    result = train(cfg, tmp_path)
    assert result.steps == 2 * (100 // 8)
    assert result.knn_start is not None and 0 <= result.knn_start <= 100
    assert result.knn_end is not None
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["knn_top1"] is not None for r in records)
    assert all(math.isfinite(r["loss"]) for r in records)
    for name in ("config.yaml", "last.pt", "curves.png", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == result.steps


def test_resolved_config_reloads_identically(micro_config, tmp_path):
    from training.config import load_config

    cfg = micro_config("optim.epochs=1")
    Trainer(cfg, tmp_path)
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_non_finite_loss_stops_with_a_clear_message(micro_config, tmp_path, monkeypatch):
    real = DINO.forward_backward

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DINO, "forward_backward", poisoned)
    with pytest.raises(TrainingDiverged, match="diverged"):
        Trainer(micro_config("optim.epochs=1"), tmp_path).fit()


def test_collapse_watch_warns(tmp_path, caplog):
    log = MetricsLog(tmp_path, tensorboard=False, out_dim=64)
    with caplog.at_level(logging.WARNING):
        log.check({"loss": 1.0, "teacher_entropy": math.log(64) * 0.99}, 10)
        log.check({"loss": 1.0, "teacher_batch_entropy": 0.01}, 20)
    assert "uniform" in caplog.text and "dominates" in caplog.text


def test_sinkhorn_and_koleo_options_train(micro_config, tmp_path):
    cfg = micro_config("optim.epochs=1", "loss.centering=sinkhorn", "loss.koleo_weight=0.1")
    result = Trainer(cfg, tmp_path).fit()
    assert all(math.isfinite(v) for v in result.losses)


def test_last_layer_frozen_during_first_epoch(micro_config, tmp_path):
    cfg = micro_config("optim.epochs=2", "run.max_steps=15", "head.norm_last_layer=false")
    trainer = Trainer(cfg, tmp_path)
    before = [p.clone() for p in trainer.model.student.head.last_layer_parameters()]
    trainer.fit()  # 15 steps = exactly the first epoch
    after = trainer.model.student.head.last_layer_parameters()
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))
    mlp_moved = any(
        not torch.equal(p, q)
        for p, q in zip(
            trainer.model.student.head.mlp.parameters(),
            DINO(cfg).student.head.mlp.parameters(),
            strict=True,
        )
    )
    assert mlp_moved


def test_no_checkpoint_is_written_after_a_non_finite_gradient(micro_config, tmp_path, monkeypatch):
    # Step 3's gradients turn NaN while its loss stays finite, so its weights are NaN. Metrics
    # are only checked every 100 steps; the checkpoint at step 3 must still be refused.
    real = DINO.forward_backward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            next(p for p in self.student.parameters() if p.grad is not None).grad.fill_(math.nan)
        return out

    monkeypatch.setattr(DINO, "forward_backward", poisoned)
    cfg = micro_config("optim.epochs=1", "run.log_every_steps=100", "run.save_every_steps=2")
    with pytest.raises(TrainingDiverged, match="non-finite"):
        Trainer(cfg, tmp_path).fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())


def test_fit_keeps_no_tensor_per_step(micro_config, tmp_path, monkeypatch):
    import weakref

    real = DINO.forward_backward
    refs: list[weakref.ref] = []
    alive: list[int] = []  # during the run: how many earlier steps' loss tensors still exist

    def tracked(self, *args, **kwargs):
        alive.append(sum(r() is not None for r in refs))
        out = real(self, *args, **kwargs)
        refs.append(weakref.ref(out["loss"]))
        return out

    monkeypatch.setattr(DINO, "forward_backward", tracked)
    result = Trainer(micro_config("optim.epochs=1", "run.log_every_steps=100"), tmp_path).fit()
    assert len(result.losses) == len(refs) == 15
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.losses)
    assert max(alive) <= 1, alive  # not one live tensor per step


def test_drop_path_and_augmentation_draw_from_distinct_streams():
    from training.train import AUGMENT, MODEL, step_seed

    seeds = {step_seed(0, s, r, k) for s in range(50) for r in range(4) for k in (AUGMENT, MODEL)}
    assert len(seeds) == 400  # every (step, rank, stream) its own seed
    a = torch.Generator().manual_seed(step_seed(0, 7, 0, AUGMENT))
    m = torch.Generator().manual_seed(step_seed(0, 7, 0, MODEL))
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=m))
