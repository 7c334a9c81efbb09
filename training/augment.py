"""DINO multi-crop augmentation as batched tensor ops with per-sample random parameters.

The same code runs on the GPU (the fast path: the whole batch at once) and on the CPU (tests, the
plain path). Input is a batch of decoded images already resized to one square `load_size`, plus
each image's original aspect ratio (width / height), so crop boxes are drawn in the original
geometry and come out undistorted. All randomness comes from the `torch.Generator` passed in, so
a step's crops are a pure function of its seed (resume reproduces them exactly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.config import CropConfig

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision use


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device):
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def sample_boxes(
    aspect: torch.Tensor,
    scale: tuple[float, float],
    g: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes in normalised image coordinates.

    Args:
        aspect: (B,) width / height of each original image.
        scale: range of the crop's area as a fraction of the image's area.
    Returns:
        (B, 4) boxes (x0, y0, w, h) with values in [0, 1] of the image's width and height.
    """
    b, dev = aspect.shape[0], aspect.device
    area = torch.empty(b, tries, device=dev).uniform_(*scale, generator=g)
    log_r = torch.empty(b, tries, device=dev).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=g
    )
    r = torch.exp(log_r)
    # In units of the image's width and height: w·W × h·H = area·W·H and (w·W)/(h·H) = r.
    a = aspect[:, None]
    w = torch.sqrt(area * r / a)
    h = torch.sqrt(area / (r / a))
    ok = (w <= 1) & (h <= 1)
    first = torch.where(
        ok.any(1), ok.float().argmax(1), torch.zeros_like(ok[:, 0], dtype=torch.long)
    )
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # No try fitted: as torchvision, fall back to the largest box whose ratio is in range.
    fallback = ~ok.any(1)
    fb_w = torch.where(aspect > ratio[1], ratio[1] / aspect, torch.ones_like(aspect))
    fb_h = torch.where(aspect < ratio[0], aspect / ratio[0], torch.ones_like(aspect))
    w = torch.where(fallback, fb_w, w)
    h = torch.where(fallback, fb_h, h)
    x0 = torch.rand(b, generator=g, device=dev) * (1 - w)
    y0 = torch.rand(b, generator=g, device=dev) * (1 - h)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image to its box, resize to `size` (bicubic) and mirror where `flip`.

    Args:
        images: (B, 3, S, S) float in [0, 1].
        boxes: (B, 4) from `sample_boxes`.
        flip: (B,) bool.
    """
    x0, y0, w, h = boxes.unbind(1)
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = 2 * (x0 + w / 2) - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * (y0 + h / 2) - 1
    grid = F.affine_grid(theta, [images.shape[0], 3, size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)  # (B, 1, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / maxc.clamp(min=1e-8)
    d = delta.clamp(min=1e-8)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Each sextant picks (r, g, b) from (v, t, p, q).
    table = torch.stack(
        [
            torch.stack([v, t, p], 1),
            torch.stack([q, v, p], 1),
            torch.stack([p, v, t], 1),
            torch.stack([p, q, v], 1),
            torch.stack([t, p, v], 1),
            torch.stack([v, p, q], 1),
        ],
        0,
    )  # (6, B, 3, H, W)
    idx = i[None, :, None].expand(1, -1, 3, -1, -1)
    return table.gather(0, idx).squeeze(0)


def color_jitter(
    x: torch.Tensor,
    strength: tuple[float, float, float, float],
    p: float,
    g: torch.Generator,
) -> torch.Tensor:
    """torchvision's ColorJitter with per-sample factors, applied to a random subset (prob p)."""
    b, dev = x.shape[0], x.device
    bri, con, sat, hue = strength
    apply = _bernoulli(b, p, g, dev)
    out = x
    # The op order is host-side control flow: draw it on the CPU from the generator's seed so a
    # CUDA generator never forces a device→host sync.
    order = torch.randperm(4, generator=torch.Generator().manual_seed(g.initial_seed()))
    for op in order.tolist():
        if op == 0 and bri > 0:
            out = (out * _uniform(b, 1 - bri, 1 + bri, g, dev).view(-1, 1, 1, 1)).clamp(0, 1)
        elif op == 1 and con > 0:
            mean = _gray(out).mean((1, 2, 3), keepdim=True)
            out = _blend(out, mean, _uniform(b, 1 - con, 1 + con, g, dev))
        elif op == 2 and sat > 0:
            out = _blend(out, _gray(out), _uniform(b, 1 - sat, 1 + sat, g, dev))
        elif op == 3 and hue > 0:
            hsv = _rgb_to_hsv(out)
            shift = _uniform(b, -hue, hue, g, dev).view(-1, 1, 1)
            hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            out = _hsv_to_rgb(hsv)
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def gaussian_blur(
    x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Per-sample Gaussian blur (σ uniform in range) on a random subset, as one grouped conv."""
    b, c, hgt, wid = x.shape
    dev = x.device
    apply = _bernoulli(b, p, g, dev)
    sig = _uniform(b, sigma[0], sigma[1], g, dev)
    if p <= 0:
        return x
    radius = min(math.ceil(3 * sigma[1]), (min(hgt, wid) - 1) // 2)
    if radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(offsets[None] ** 2) / (2 * sig[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, K)
    k = k.repeat_interleave(c, 0)  # (B·C, K): one kernel per channel of each sample
    y = x.reshape(1, b * c, hgt, wid)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return torch.where(apply.view(-1, 1, 1, 1), y.view(b, c, hgt, wid), x)


def _photometric(
    x: torch.Tensor, cfg: CropConfig, blur_p: float, solarize_p: float, g: torch.Generator
) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    x = color_jitter(x, cfg.jitter, cfg.jitter_p, g)
    gray = _bernoulli(b, cfg.grayscale_p, g, dev).view(-1, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    x = gaussian_blur(x, blur_p, cfg.blur_sigma, g)
    if solarize_p > 0:
        sol = _bernoulli(b, solarize_p, g, dev).view(-1, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
    mean = x.new_tensor(cfg.mean).view(1, 3, 1, 1)
    std = x.new_tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


class MultiCropAugment:
    """DINO's multi-crop: 2 global views (224 px) and N local views (96 px) per image.

    Args:
        cfg: crop sizes, scales and photometric probabilities.
    """

    def __init__(self, cfg: CropConfig) -> None:
        self.cfg = cfg

    @property
    def n_views(self) -> int:
        return 2 + self.cfg.local_number

    def __call__(
        self, images: torch.Tensor, aspect: torch.Tensor, g: torch.Generator
    ) -> list[torch.Tensor]:
        """Make all views of a batch.

        Args:
            images: (B, 3, S, S) uint8 or float in [0, 1], on the device that should do the work.
            aspect: (B,) original width / height.
            g: generator on the same device.
        Returns:
            [global 1 (B,3,G,G), global 2 (B,3,G,G), locals (N·B,3,L,L) in view-major order] —
            the locals are one tensor because they all go through the model together.
        """
        cfg = self.cfg
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        aspect = aspect.to(x.device, torch.float32)
        b, dev = x.shape[0], x.device
        views = []
        for blur_p, sol_p in ((cfg.blur_p[0], 0.0), (cfg.blur_p[1], cfg.solarize_p)):
            boxes = sample_boxes(aspect, cfg.global_scale, g)
            crop = crop_resize(x, boxes, cfg.global_size, _bernoulli(b, 0.5, g, dev))
            views.append(_photometric(crop, cfg, blur_p, sol_p, g))
        if cfg.local_number:
            locals_ = [
                crop_resize(
                    x,
                    sample_boxes(aspect, cfg.local_scale, g),
                    cfg.local_size,
                    _bernoulli(b, 0.5, g, dev),
                )
                for _ in range(cfg.local_number)
            ]
            views.append(_photometric(torch.cat(locals_), cfg, cfg.blur_p[2], 0.0, g))
        return views
