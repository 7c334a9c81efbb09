import json

import torch

from training.train import Trainer, run_summary


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

    # summary.json is the whole run's, with each segment's own figures kept
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["steps"] == 30 and [s["steps"] for s in summary["segments"]] == [11, 19]
    assert summary["knn_start"] == first.knn_start and summary["knn_end"] == rest.knn_end
    assert summary["wall_s"] == first.wall_s + rest.wall_s


def test_checkpoints_every_n_epochs(micro_config, tmp_path):
    Trainer(micro_config("optim.epochs=2", "run.save_every_epochs=1"), tmp_path).fit()
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["checkpoint-epoch0001.pt", "checkpoint-epoch0002.pt", "last.pt"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_a_summary_written_before_segments_counts_as_one_segment():
    old = {"steps": 300, "knn_start": 21.5, "knn_end": 47.0, "wall_s": 100.0, "failed_images": 2}
    seg = {"steps": 700, "knn_start": None, "knn_end": 91.0, "wall_s": 300.0, "failed_images": 1}
    seg |= {"device": "cpu", "torch": "x"}
    s = run_summary(old, seg, step=1000, imgs_per_step=64)
    assert (s["steps"], s["knn_start"], s["knn_end"], s["failed_images"]) == (1000, 21.5, 91.0, 3)
    assert s["wall_s"] == 400.0 and s["images_per_s"] == 1000 * 64 / 400.0
    assert s["segments"] == [old, seg]
    assert run_summary(None, seg, 700, 64)["segments"] == [seg]
