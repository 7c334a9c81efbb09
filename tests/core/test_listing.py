"""core.listing: one labelling rule for the trainer, folders and tars (wrapper folders skipped)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from core.listing import is_image_name, label_of, wrapper_depth
from indexer.sources import list_source
from training.data import list_images


def _depth(*paths: str) -> int:
    return wrapper_depth([tuple(p.split("/")) for p in paths])


def test_wrapper_depth_rule():
    assert _depth("cat/a.jpg", "dog/b.jpg") == 0  # classes at the top
    assert _depth("train/cat/a.jpg", "train/dog/b.jpg") == 1  # one wrapper
    assert _depth("data/train/cat/a.jpg", "data/train/dog/b.jpg") == 2
    assert _depth("cat/a.jpg", "cat/b.jpg") == 0  # a single class holds its images directly
    assert _depth("train/a.jpg", "train/cat/b.jpg") == 1  # a.jpg: in no class
    assert _depth("a.jpg", "train/cat/b.jpg") == 0  # an image beside it: train is a class
    assert _depth() == 0
    assert label_of(("train", "cat", "a.jpg"), 1) == "cat"
    assert label_of(("train", "a.jpg"), 1) is None
    assert is_image_name("x/A.JPG") and not is_image_name("x/.a.jpg")
    assert not is_image_name("notes.txt")


@pytest.fixture
def wrapped(synthetic_dir: Path, tmp_path: Path) -> Path:
    """`root/train/<class>/…`: a wrapper folder above the 10 classes."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_dir, root / "train")
    return root


def test_wrapper_folder_labels_by_class_in_a_folder(wrapped, synthetic_dir):
    classes = {d.name for d in synthetic_dir.iterdir() if d.is_dir()}
    items = list_source(wrapped, "dirs")
    assert len(items) == 120 and {it.label for it in items} == classes
    assert all(Path(it.uri).parent.name == it.label for it in items)
    trained = list_images(wrapped)  # the trainer agrees
    assert set(trained.classes) == classes and trained.root == wrapped / "train"


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_wrapper_folder_labels_by_class_in_a_tar(wrapped, synthetic_dir, tmp_path, mode, suffix):
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(wrapped, arcname="root")  # two wrappers: root/train/<class>/…
    items = list_source(archive, "dirs")
    assert len(items) == 120
    assert {it.label for it in items} == {d.name for d in synthetic_dir.iterdir() if d.is_dir()}
    assert all(it.uri.rsplit("/", 2)[-2] == it.label for it in items)
