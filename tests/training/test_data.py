import shutil
import tarfile
from pathlib import Path

import pytest

from training.data import (
    ResumableSampler,
    TrainImages,
    UnreadableBatch,
    collate,
    list_images,
    resolve_source,
    split_holdout,
)


def test_folder_labels_from_class_dirs(synthetic_dir):
    images = list_images(synthetic_dir)
    assert len(images.classes) == 10 and len(images.files) == 120
    assert sorted(set(images.labels)) == list(range(10))


def test_single_wrapping_folder_is_not_a_class(synthetic_dir, tmp_path):
    wrapped = tmp_path / "archive_root"
    shutil.copytree(synthetic_dir, wrapped / "train")
    images = list_images(wrapped)
    assert len(images.classes) == 10


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_tar_sources(synthetic_dir, tmp_path, mode, suffix):
    archive = tmp_path / f"data{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(synthetic_dir, arcname="train")
    root = resolve_source(archive, tmp_path / "cache")
    images = list_images(root)
    assert len(images.files) == 120 and len(images.classes) == 10
    assert resolve_source(archive, tmp_path / "cache") == root  # unpacked once, then reused


def test_unreadable_images_are_skipped_and_counted(synthetic_dir, tmp_path):
    folder = tmp_path / "mixed" / "cls"
    folder.mkdir(parents=True)
    good = sorted(synthetic_dir.rglob("*.png"))[:3]
    for i, src in enumerate(good):
        (folder / f"ok{i}.png").write_bytes(src.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    (folder / "empty.jpg").write_bytes(b"")
    ds = TrainImages(list_images(tmp_path / "mixed"), load_size=32)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.failed == 3
    assert batch.images.shape == (6, 3, 32, 32)
    assert all(batch.images[i].float().std() > 0 for i in range(6))  # replaced, not blank
    with pytest.raises(UnreadableBatch):
        collate([ds[i] for i in range(len(ds)) if not ds[i][2]])


def test_non_square_images_keep_their_aspect(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (80, 40), "red").save(tmp_path / "a" / "wide.png")
    ds = TrainImages(list_images(tmp_path), load_size=24)
    img, aspect, ok = ds[0]
    assert ok and img.shape == (3, 24, 24) and aspect == 2.0


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    s = ResumableSampler(103, batch_size=10, seed=5)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 100 and len(set(full)) == 100
    s.set_epoch(2, start_batch=4)
    assert list(s) == full[40:]
    s.set_epoch(3)
    assert list(s) != full
    r0 = ResumableSampler(103, 10, seed=5, rank=0, world_size=2)
    r1 = ResumableSampler(103, 10, seed=5, rank=1, world_size=2)
    r0.set_epoch(1)
    r1.set_epoch(1)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 50 and not set(a) & set(b)


def test_holdout_split(synthetic_dir):
    rest, held = split_holdout(list_images(synthetic_dir), per_class=2)
    assert len(held.files) == 20 and len(rest.files) == 100
    assert not set(held.files) & set(rest.files)
    by_class = {
        c: [f for f, lab in zip(rest.files, rest.labels, strict=True) if lab == c]
        for c in range(10)
    }
    for f, lab in zip(held.files, held.labels, strict=True):
        assert f.parent.name == held.classes[lab]
        assert f.name > max(p.name for p in by_class[lab])  # the last ones of the class


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_source(tmp_path / "nope", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(Path(empty))
