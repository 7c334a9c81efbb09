"""Smoke runs of the discovery benchmarks on a fake CIFAR archive, so they keep working as
the code under them changes (they measure on ../shared data, which tests never read)."""

import json
import sys

from bench.device import gpu_train


def test_copy_detection_scores_groups_of_edited_copies(tmp_path, monkeypatch, capsys):
    from bench import copy_detection

    tar = gpu_train.fake_cifar(tmp_path / "fake.tar.gz", per_class=8)  # 80 images
    argv = ["copy_detection", "--random-init", "configs/tiny.yaml", "--data", str(tar)]
    argv += ["--scale", "0.003", "--thresholds", "0.5,0.999999", "--tmp", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    copy_detection.main()
    run = json.loads(capsys.readouterr().out)
    rows = {r["threshold"]: r for r in run["rows"]}
    assert set(rows) == {0.5, 0.999999}
    # 3 sources × 6 images + 60 others; at 0.5 the copies of a source all join one group.
    assert rows[0.5]["recall"] == 1.0
    assert 0 <= rows[0.999999]["recall"] <= rows[0.5]["recall"]
    assert all(0 <= r["precision"] <= 1 for r in rows.values())


def test_cluster_quality_scores_nmi_and_purity(tmp_path, monkeypatch, capsys):
    from bench import cluster_quality

    tar = gpu_train.fake_cifar(tmp_path / "fake.tar.gz", per_class=4)
    out = tmp_path / "out"
    argv = ["cluster_quality", "--tar", str(tar), "--per-class", "3", "--epochs", "0"]
    argv += ["--points", "0", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    cluster_quality.main()
    rows = json.loads((out / "cluster_quality.json").read_text())
    quality = [r for r in rows if r["what"] == "quality"]
    assert len(quality) == 1 and quality[0]["points"] == 30 and quality[0]["k"] == 10
    assert 0 <= quality[0]["nmi"] <= 1 and 0.1 <= quality[0]["purity"] <= 1
