import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from training.augment import (
    MultiCropAugment,
    _gray,
    blur_with,
    color_jitter,
    crop_resize,
    gaussian_blur,
    jitter_orders,
    jitter_with,
    sample_boxes,
    solarize,
)
from training.config import CropConfig
from training.data import pad_stack


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
        global_scale=(1.0, 1.0),
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(0.0, 0.0, 0.0),
        solarize_p=0.0,
        local_number=0,
        global_size=40,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
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


# -- full-resolution crops ---------------------------------------------------------------------
def _zone_plate(h: int, w: int) -> torch.Tensor:
    """cos(k·r²): every spatial frequency up to Nyquist, the classic aliasing test pattern."""
    yy, xx = torch.meshgrid(torch.arange(h) - h / 2, torch.arange(w) - w / 2, indexing="ij")
    img = 0.5 + 0.5 * torch.cos(math.pi * (xx**2 + yy**2) / max(h, w))
    return torch.stack([img, img.flip(0), img.flip(1)])  # (3, h, w)


@pytest.mark.parametrize("out", [160, 100, 64, 50])  # shrink 1.25×, 2×, 3.1×, 4×
def test_shrinking_crop_matches_torchvision_antialiased_resize(out):
    img = _zone_plate(240, 320)
    top, left, height, width = 20, 40, 200, 200
    box = torch.tensor([[left / 320, top / 240, width / 320, height / 240]])
    ours = crop_resize(img[None], box, out, torch.tensor([False]))[0]
    smooth = TF.resized_crop(img, top, left, height, width, [out, out], antialias=True)
    aliased = TF.resized_crop(img, top, left, height, width, [out, out], antialias=False)
    err = (ours - smooth).abs().mean()
    assert err < 0.03, err
    if out <= 100:  # the pattern does alias without a filter; ours is far closer to the filtered
        assert (aliased - smooth).abs().mean() > 3 * err


def test_growing_crop_is_bilinear_as_torchvision():
    img = _zone_plate(240, 320)
    box = torch.tensor([[40 / 320, 20 / 240, 100 / 320, 100 / 240]])
    up = crop_resize(img[None], box, 256, torch.tensor([False]))[0]
    ref = TF.resized_crop(img, 20, 40, 100, 100, [256, 256], antialias=True)
    assert (up - ref).abs().mean() < 0.005


def test_crops_of_a_padded_canvas_only_see_their_own_image():
    big, small = torch.rand(3, 48, 64), torch.rand(3, 30, 20)
    canvas, sizes = pad_stack([big, small])
    assert canvas.shape == (2, 3, 48, 64) and sizes.tolist() == [[48, 64], [30, 20]]
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    out = crop_resize(canvas, whole, 24, torch.tensor([False, True]), sizes)
    alone = crop_resize(small[None], whole[:1], 24, torch.tensor([True]))
    assert torch.allclose(out[1], alone[0], atol=1e-6)


def test_multicrop_on_mixed_sizes_is_undistorted_and_full_resolution():
    cfg = _cfg(jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0, load_size=0)
    canvas, sizes = pad_stack([torch.rand(3, 60, 80), torch.rand(3, 80, 60)])
    aspect = sizes[:, 1] / sizes[:, 0]
    views = MultiCropAugment(cfg)(canvas, aspect, torch.Generator().manual_seed(0), sizes)
    assert [tuple(v.shape) for v in views] == [(2, 3, 32, 32)] * 2 + [(6, 3, 16, 16)]
    assert all(torch.isfinite(v).all() for v in views)


# -- photometric parity with torchvision.transforms.v2.functional ------------------------------
def _tv_jitter(img: torch.Tensor, f: torch.Tensor, order: list[int]) -> torch.Tensor:
    for op in order:
        if op == 0:
            img = TF.adjust_brightness(img, float(f[0]))
        elif op == 1:
            img = TF.adjust_contrast(img, float(f[1]))
        elif op == 2:
            img = TF.adjust_saturation(img, float(f[2]))
        else:
            img = TF.adjust_hue(img, float(f[3]))
    return img


@pytest.mark.parametrize("op", [0, 1, 2, 3, None], ids=["bri", "con", "sat", "hue", "all"])
def test_color_jitter_matches_torchvision(op):
    torch.manual_seed(0)
    b = 12
    x = torch.rand(b, 3, 16, 16)
    factors = torch.stack(
        [torch.empty(b).uniform_(0.6, 1.4) for _ in range(3)]
        + [torch.empty(b).uniform_(-0.1, 0.1)],
        1,
    )
    order = torch.rand(b, 4).argsort(1)
    if op is not None:  # one op alone: the others at their identity value
        keep = torch.zeros(4, dtype=torch.bool)
        keep[op] = True
        factors = torch.where(keep, factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    ours = jitter_with(x, factors, order)
    for i in range(b):
        ref = _tv_jitter(x[i], factors[i], order[i].tolist())
        assert torch.allclose(ours[i], ref, atol=2e-5), (i, (ours[i] - ref).abs().max())


def test_jitter_order_is_drawn_per_image():
    orders = jitter_orders(64, torch.Generator().manual_seed(0))
    assert sorted(orders[0].tolist()) == [0, 1, 2, 3]
    assert len({tuple(r) for r in orders.tolist()}) > 10  # not one order for the whole batch
    assert torch.equal(orders, jitter_orders(64, torch.Generator().manual_seed(0)))


def test_grayscale_blur_and_solarize_match_torchvision():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 20, 24)
    assert torch.allclose(_gray(x).expand_as(x), TF.rgb_to_grayscale(x, 3), atol=1e-6)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    radius = 6
    ours = blur_with(x, sigma, radius)
    for i in range(4):
        s = float(sigma[i])
        ref = TF.gaussian_blur(x[i], [2 * radius + 1] * 2, [s, s])
        assert torch.allclose(ours[i], ref, atol=1e-5)
    apply = torch.tensor([True, False, True, False])
    sol = solarize(x, apply)
    for i in range(4):
        assert torch.equal(sol[i], TF.solarize(x[i], 0.5) if apply[i] else x[i])
