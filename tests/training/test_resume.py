import torch

from training.train import Trainer


def test_resume_continues_exactly_like_an_uninterrupted_run(micro_config, tmp_path):
    # 120 images / batch 8 = 15 steps per epoch; stop inside epoch 1 (step 11) and resume.
    full = Trainer(micro_config("optim.epochs=2"), tmp_path / "a").fit()
    first = Trainer(micro_config("optim.epochs=2", "run.max_steps=11"), tmp_path / "b").fit()
    assert first.steps == 11 and (tmp_path / "b" / "last.pt").exists()
    resumed_trainer = Trainer(micro_config("optim.epochs=2"), tmp_path / "b", resume=True)
    assert resumed_trainer.step == 11
    rest = resumed_trainer.fit()
    losses = first.losses + rest.losses
    assert len(losses) == len(full.losses) == 30
    diffs = [abs(a - b) for a, b in zip(losses, full.losses, strict=True)]
    assert max(diffs) < 1e-5, diffs

    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 30
    for key, value in a["teacher"].items():
        assert torch.allclose(value, b["teacher"][key], atol=1e-5), key
    assert torch.allclose(a["dino_loss"]["center"], b["dino_loss"]["center"], atol=1e-6)


def test_checkpoints_every_n_epochs(micro_config, tmp_path):
    Trainer(micro_config("optim.epochs=2", "run.save_every_epochs=1"), tmp_path).fit()
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["checkpoint-epoch0001.pt", "checkpoint-epoch0002.pt", "last.pt"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
