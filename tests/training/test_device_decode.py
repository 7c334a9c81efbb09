import torch
from PIL import Image

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
