"""`dinoserve eval knn`: the service's vote over exact neighbours, on labelled folders or tars."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from core.knn import knn_vote
from dinoserve.cli import main
from evaluation.knn import evaluate_knn, knn_scores
from evaluation.sources import EvalError
from tests.fakes import FakeEngine
from training.synthetic import CLASSES, make_synthetic


def _unit(rows):
    v = np.asarray(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_scores_follow_the_services_vote():
    rng = np.random.default_rng(0)
    memory = _unit(rng.normal(size=(60, 8)))
    labels = [f"c{i % 6}" for i in range(60)]
    queries = _unit(rng.normal(size=(25, 8)))
    truth = [f"c{i % 6}" for i in range(25)]
    top1, top5 = knn_scores(memory, labels, queries, truth, k=7, temperature=0.07)
    for q in range(25):
        sims = memory @ queries[q]
        nn = np.argsort(-sims)[:7]
        vote = knn_vote(sims[nn].tolist(), [labels[i] for i in nn], 0.07)
        assert top1[q] == (vote.label == truth[q])
        assert top5[q] == (truth[q] in list(vote.scores)[:5])
    assert top5.sum() >= top1.sum()


def test_a_query_equal_to_its_labelled_copy_is_right():
    memory = _unit(np.eye(4) + 0.01)
    top1, top5 = knn_scores(memory, list("abcd"), memory.copy(), list("abcd"), k=2)
    assert top1.all() and top5.all()


def test_evaluate_on_folders_and_on_a_tar(tmp_path):
    make_synthetic(tmp_path / "train", 6, 16, seed=1)
    make_synthetic(tmp_path / "val", 2, 16, seed=2)
    engine = FakeEngine()
    on_dirs = evaluate_knn(engine, tmp_path / "train", tmp_path / "val", progress=False)
    assert on_dirs.n_train == 60 and on_dirs.n_val == 20 and on_dirs.classes == 10
    assert 0 <= on_dirs.top1 <= on_dirs.top5 <= 100
    assert sorted(on_dirs.per_class_top1) == sorted(CLASSES)
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "train", arcname="train")  # a wrapper folder, as CIFAR's tar has
    on_tar = evaluate_knn(engine, archive, tmp_path / "val", progress=False)
    assert (on_tar.top1, on_tar.top5, on_tar.n_train) == (on_dirs.top1, on_dirs.top5, 60)


def test_an_undecodable_image_is_skipped_and_named(tmp_path):
    make_synthetic(tmp_path / "train", 3, 16, seed=1)
    make_synthetic(tmp_path / "val", 1, 16, seed=2)
    (tmp_path / "val" / "star" / "broken.png").write_bytes(b"not a png")
    result = evaluate_knn(FakeEngine(), tmp_path / "train", tmp_path / "val", progress=False)
    assert result.skipped == ["star/broken.png"] and result.n_val == 10


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "holds no image"),
        (
            lambda p: (
                make_synthetic(p, 1, 16, seed=3)
                and (p / "loose.png").write_bytes((p / "star" / "00000.png").read_bytes())
            ),
            "outside any class folder",
        ),
    ],
)
def test_bad_sources_get_one_clear_line(tmp_path, make, message):
    make_synthetic(tmp_path / "train", 2, 16, seed=1)
    make(tmp_path / "val")
    with pytest.raises(EvalError, match=message):
        evaluate_knn(FakeEngine(), tmp_path / "train", tmp_path / "val", progress=False)


def test_disjoint_classes_are_refused(tmp_path):
    make_synthetic(tmp_path / "train", 2, 16, seed=1)
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    (tmp_path / "val" / "zebra" / "a.png").write_bytes(
        (tmp_path / "train" / "star" / "00000.png").read_bytes()
    )
    with pytest.raises(EvalError, match="share no class"):
        evaluate_knn(FakeEngine(), tmp_path / "train", tmp_path / "val", progress=False)


def test_cli_prints_json_for_a_package(tmp_path, micro_package, capsys):
    make_synthetic(tmp_path / "train", 4, 32, seed=1)
    make_synthetic(tmp_path / "val", 2, 32, seed=2)
    out = tmp_path / "knn.json"
    argv = ["eval", "knn", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val")]
    assert main([*argv, "--model", str(micro_package), "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["n_train"] == 40 and doc["n_val"] == 20 and doc["k"] == 20
    assert doc["temperature"] == 0.07 and 0 <= doc["top1"] <= doc["top5"] <= 100


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, micro_package, capsys):
    (tmp_path / "empty").mkdir()
    make_synthetic(tmp_path / "val", 1, 32, seed=2)
    argv = ["eval", "knn", "--train", str(tmp_path / "empty"), "--val", str(tmp_path / "val")]
    assert main([*argv, "--model", str(micro_package)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no image" in err[0]
