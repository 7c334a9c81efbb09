import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import MultiCropAugment
from training.config import load_config
from training.data import TrainImages, collate, list_images
from training.device_decode import EncodedImages, collate_encoded, decode_batch
from training.train import Trainer


def _mixed_folder(root, n=6):
    folder = root / "cls"
    folder.mkdir(parents=True)
    for i in range(n):
        img = Image.new("RGB", (40 + 8 * i, 30), (40 * i, 255 - 30 * i, 90))
        img.save(folder / f"{i}.jpg", quality=95)
    Image.new("RGB", (30, 30), "blue").save(folder / "p.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "junk.png").write_bytes(b"junk")
    return list_images(root)


def test_device_path_matches_the_cpu_path(tmp_path):
    images = _mixed_folder(tmp_path)
    n = len(images.files)
    dev = decode_batch(
        collate_encoded([EncodedImages(images, 24)[i] for i in range(n)]), 24, torch.device("cpu")
    )
    cpu = collate([TrainImages(images, 24)[i] for i in range(n)])
    assert dev.images.shape == cpu.images.shape == (n, 3, 24, 24)
    assert dev.images.dtype == torch.uint8
    assert dev.failed == cpu.failed == 2
    assert torch.allclose(dev.aspect, cpu.aspect)
    # Different decoders and resizers: the pixels agree to a few levels on average.
    diff = (dev.images.float() - cpu.images.float()).abs().mean()
    assert diff < 6, diff


def test_training_runs_on_the_device_decode_path(micro_config, tmp_path):
    result = Trainer(micro_config("optim.epochs=1", "data.decode=device"), tmp_path).fit()
    assert result.steps == 15 and all(torch.isfinite(torch.tensor(result.losses)))


def _gradient(w: int, h: int) -> Image.Image:
    """An image whose every corner differs, so any flip or rotation shows."""
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def _decode_both(images, load_size=0, max_side=0):
    n = len(images.files)
    dev = decode_batch(
        collate_encoded([EncodedImages(images, load_size, max_side)[i] for i in range(n)]),
        load_size,
        torch.device("cpu"),
        max_side,
    )
    cpu = collate([TrainImages(images, load_size, max_side)[i] for i in range(n)])
    return dev, cpu


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_path_applies_exif_orientation_as_the_cpu_path(tmp_path, orientation):
    folder = tmp_path / "cls"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    _gradient(48, 32).save(folder / "a.jpg", quality=95, exif=exif)
    dev, cpu = _decode_both(list_images(tmp_path))
    assert dev.sizes.tolist() == cpu.sizes.tolist()
    assert torch.allclose(dev.aspect, cpu.aspect)
    assert (dev.images.float() - cpu.images.float()).abs().mean() < 3


def test_jpegs_the_device_decoder_rejects_are_decoded_on_the_cpu(tmp_path, monkeypatch):
    import training.device_decode as dd

    folder = tmp_path / "cls"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 200 - 40 * i, 90)).save(folder / f"{i}.jpg")
    _gradient(36, 28).save(folder / "z_rejected.jpg", quality=95)
    rejected = (folder / "z_rejected.jpg").read_bytes()
    real = dd.decode_jpeg

    def picky(data, **kwargs):  # as nvJPEG refusing a subsampling or coding it does not support
        items = data if isinstance(data, list) else [data]
        if any(len(d) == len(rejected) for d in items):
            raise RuntimeError("nvjpegDecode: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(dd, "decode_jpeg", picky)
    dev, cpu = _decode_both(list_images(tmp_path))
    assert dev.failed == cpu.failed == 0
    assert dev.sizes.tolist() == cpu.sizes.tolist() == [[30, 40]] * 4 + [[28, 36]]
    h, w = dev.sizes[4].tolist()
    own = dev.images[4, :, :h, :w].float()
    assert (own - cpu.images[4, :, :h, :w].float()).abs().mean() < 1  # its own pixels, via PIL
    assert not torch.equal(dev.images[4], dev.images[0])  # not a duplicate of another image


def test_full_resolution_batches_match_between_paths_and_bound_the_long_side(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    _gradient(500, 375).save(folder / "a.jpg", quality=95)
    _gradient(375, 500).save(folder / "b.jpg", quality=95)
    _gradient(1200, 600).save(folder / "c.jpg", quality=95)  # over max_side: shrunk
    Image.new("RGB", (30, 30), "blue").save(folder / "d.png")
    dev, cpu = _decode_both(list_images(tmp_path), max_side=512)
    assert (
        dev.sizes.tolist() == cpu.sizes.tolist() == [[375, 500], [500, 375], [256, 512], [30, 30]]
    )
    assert dev.images.shape == cpu.images.shape == (4, 3, 500, 512)
    assert torch.allclose(dev.aspect, cpu.aspect)
    assert (dev.images.float() - cpu.images.float()).abs().mean() < 2
    # The same generator then makes the same views from either batch.
    cfg = load_config(None, ["crops.global_size=64", "crops.local_size=32", "crops.local_number=2"])
    aug = MultiCropAugment(cfg.crops)
    a = aug(dev.images, dev.aspect, torch.Generator().manual_seed(0), dev.sizes)
    b = aug(cpu.images, cpu.aspect, torch.Generator().manual_seed(0), cpu.sizes)
    for x, y in zip(a, b, strict=True):
        assert (x - y).abs().mean() < 0.05
