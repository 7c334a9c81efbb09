import math

import pytest
import torch

from training.augment import MultiCropAugment, color_jitter, gaussian_blur, sample_boxes
from training.config import CropConfig


def _cfg(**kw) -> CropConfig:
    base = dict(global_size=32, local_size=16, local_number=3, load_size=40)
    return CropConfig(**(base | kw))


def _unnormalize(x: torch.Tensor, cfg: CropConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return x * std + mean


def test_multicrop_shapes_and_ranges():
    cfg = _cfg()
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    views = MultiCropAugment(cfg)(images, torch.ones(5), torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(5, 3, 32, 32), (5, 3, 32, 32), (15, 3, 16, 16)]
    for v in views:
        assert torch.isfinite(v).all()
        raw = _unnormalize(v, cfg)
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_default_recipe_sizes():
    cfg = CropConfig()
    assert (cfg.global_size, cfg.local_size, cfg.local_number) == (224, 96, 10)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    views = MultiCropAugment(cfg)(images, torch.tensor([1.0, 4 / 3]), torch.Generator())
    assert [tuple(v.shape) for v in views] == [(2, 3, 224, 224)] * 2 + [(20, 3, 96, 96)]


@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.05, 0.4)])
@pytest.mark.parametrize("aspect", [1.0, 4 / 3, 0.5])
def test_boxes_respect_scale_and_ratio(scale, aspect):
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(torch.full((2000,), aspect), scale, g)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= scale[0] - 1e-6 and area.max() <= scale[1] + 1e-6
    ratio = (w * aspect) / h  # in pixels of the original image
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    # The areas spread over the range (not a constant).
    assert area.std() > (scale[1] - scale[0]) / 10


def test_same_seed_same_views_different_seed_different_views():
    cfg = _cfg()
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    aug = MultiCropAugment(cfg)
    a = aug(images, torch.ones(4), torch.Generator().manual_seed(3))
    b = aug(images, torch.ones(4), torch.Generator().manual_seed(3))
    c = aug(images, torch.ones(4), torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_full_crop_without_photometrics_is_identity_or_mirror():
    cfg = _cfg(
        global_scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0),
        solarize_p=0.0, local_number=0, global_size=40, mean=(0, 0, 0), std=(1, 1, 1),
    )  # fmt: skip
    images = torch.rand(6, 3, 40, 40)
    views = MultiCropAugment(cfg)(images, torch.ones(6), torch.Generator().manual_seed(0))
    for v in views:
        for i in range(6):
            same = torch.allclose(v[i], images[i], atol=1e-4)
            mirrored = torch.allclose(v[i], images[i].flip(-1), atol=1e-4)
            assert same or mirrored


def test_color_jitter_hue_roundtrip_and_probability():
    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(color_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.0, g), x)
    y = color_jitter(x, (0.0, 0.0, 0.0, 0.0), 1.0, g)
    assert torch.allclose(y, x, atol=1e-5)  # zero strength: HSV never visited, nothing changes
    z = color_jitter(x, (0.4, 0.4, 0.2, 0.1), 1.0, g)
    assert (z - x).abs().mean() > 0.01 and z.min() >= 0 and z.max() <= 1


def test_blur_smooths_and_keeps_mean():
    x = torch.rand(4, 3, 32, 32)
    y = gaussian_blur(x, 1.0, (2.0, 2.0), torch.Generator())
    assert y.shape == x.shape
    assert y.std() < x.std() * 0.5
    assert math.isclose(float(y.mean()), float(x.mean()), rel_tol=0.02)
