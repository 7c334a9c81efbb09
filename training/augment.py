"""DINO multi-crop augmentation as batched tensor ops with per-sample random parameters.

The same code runs on the GPU (the fast path: the whole batch at once) and on the CPU (tests, the
plain path), so both make the same views. Input is a batch of decoded images on one canvas, each
at its own size (full resolution) or all squashed to one square with the original aspect ratio
(width / height) kept aside; crop boxes are drawn in the original geometry, so crops come out
undistorted, and each crop is resampled with an area filter when it shrinks (no aliasing).
All randomness comes from the `torch.Generator` passed in, so a step's crops are a pure function
of its seed (resume reproduces them exactly).

The photometric ops follow torchvision.transforms.v2.functional on the same parameters (the
tests check it): ColorJitter with its op order drawn per image, grayscale, Gaussian blur,
solarisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from training.config import CropConfig

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, with torchvision's rounding


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
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image to its box, resample to size² and mirror where `flip`.

    Resampling is batched and the same on the CPU and on CUDA. torchvision's RoIAlign with an
    adaptive grid averages ⌈crop/size⌉² bilinear samples over each output pixel's footprint: an
    area filter, bilinear when the crop grows, and close to torchvision's antialiased (triangle)
    resize for shrink factors below ~1.75. Beyond that a box passes too much of the band above
    the new Nyquist, so those crops are cut at 2·size (area) and halved with the antialiased
    triangle filter, which lands within a few percent of torchvision's antialiased resize.

    Args:
        images: (B, 3, H, W) float in [0, 1]; image i fills [:, :h_i, :w_i] of the canvas.
        boxes: (B, 4) from `sample_boxes`, in units of each image's width and height.
        flip: (B,) bool.
        sizes: (B, 2) (h_i, w_i); None = every image fills the canvas.
    """
    b, _, hgt, wid = images.shape
    if sizes is None:
        hw = images.new_tensor([hgt, wid]).expand(b, 2)
    else:
        hw = sizes.to(images.device, images.dtype)
    x0, y0, w, h = boxes.to(images.dtype).unbind(1)
    h_img, w_img = hw.unbind(1)
    rois = torch.stack(
        [
            torch.arange(b, device=images.device, dtype=images.dtype),
            x0 * w_img,
            y0 * h_img,
            (x0 + w) * w_img,
            (y0 + h) * h_img,
        ],
        dim=1,
    )  # (B, 5): batch index, x1, y1, x2, y2 in pixels (pixel i spans [i, i + 1))
    out = roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    fine = roi_align(images, rois, (2 * size, 2 * size), 1.0, sampling_ratio=-1, aligned=True)
    fine = F.interpolate(fine, size=(size, size), mode="bilinear", antialias=True)
    shrink = torch.maximum(w * w_img, h * h_img) / size  # (B,) crop side / output side
    out = torch.where((shrink >= 1.75).view(-1, 1, 1, 1), fine, out)
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
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


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by shift (B,) turns, as torchvision's adjust_hue."""
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return _hsv_to_rgb(hsv)


def jitter_with(
    x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, hue_any: bool = True
) -> torch.Tensor:
    """ColorJitter with given parameters: brightness, contrast, saturation factors and hue shift.

    Args:
        x: (B, 3, H, W) in [0, 1].
        factors: (B, 4); a factor of 1 (0 for hue) leaves that op out.
        order: (B, 4) int on the CPU, each row a permutation of 0–3 (the op at each stage).
        hue_any: False skips the HSV round trip (every hue shift is 0).
    """
    bri, con, sat, hue = (factors[:, j].to(x.dtype) for j in range(4))
    zero = x.new_zeros(())
    for stage in range(4):
        op = order[:, stage].to(x.device)
        # Brightness, contrast and saturation are each a blend f·x + (1 − f)·other (other = 0,
        # the gray mean, the gray image): one blend per stage with the op picked per image.
        gray = _gray(x)
        other = torch.where(
            (op == 0).view(-1, 1, 1, 1),
            zero,
            torch.where((op == 1).view(-1, 1, 1, 1), gray.mean((1, 2, 3), keepdim=True), gray),
        )
        f = torch.where(op == 0, bri, torch.where(op == 1, con, torch.where(op == 2, sat, 1.0)))
        x = torch.where((op == 3).view(-1, 1, 1, 1), x, _blend(x, other, f))
        if hue_any:
            # The images whose hue turn is at this stage: the order lives on the host, so this
            # selection needs no device sync, and each image's HSV round trip happens once.
            idx = torch.nonzero(order[:, stage] == 3).flatten()
            if idx.numel():
                idx = idx.to(x.device)
                x = x.index_copy(0, idx, adjust_hue(x.index_select(0, idx), hue[idx]))
    return x


def jitter_orders(b: int, g: torch.Generator) -> torch.Tensor:
    """(B, 4) CPU int: one random permutation of the four jitter ops per image.

    Host-side control flow, so drawn on the CPU from a seed derived from the generator's: a CUDA
    generator never forces a device→host sync.
    """
    cpu = torch.Generator().manual_seed((g.initial_seed() + 0x9E3779B9) % 2**63)
    return torch.rand(b, 4, generator=cpu).argsort(1)


def color_jitter(
    x: torch.Tensor,
    strength: tuple[float, float, float, float],
    p: float,
    g: torch.Generator,
) -> torch.Tensor:
    """torchvision's ColorJitter per image (own factors and own op order) on a subset (prob p)."""
    b, dev = x.shape[0], x.device
    bri, con, sat, hue = strength
    apply = _bernoulli(b, p, g, dev)
    factors = torch.stack(
        [
            _uniform(b, 1 - bri, 1 + bri, g, dev),
            _uniform(b, 1 - con, 1 + con, g, dev),
            _uniform(b, 1 - sat, 1 + sat, g, dev),
            _uniform(b, -hue, hue, g, dev),
        ],
        1,
    )
    identity = factors.new_tensor([1.0, 1.0, 1.0, 0.0])
    off = torch.tensor([bri <= 0, con <= 0, sat <= 0, hue <= 0], device=dev)
    factors = torch.where(off, identity, factors)
    out = jitter_with(x, factors, jitter_orders(b, g), hue_any=hue > 0)
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def blur_with(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Gaussian blur of each image with its σ (B,), kernel 2·radius + 1, reflect padding, as
    torchvision's gaussian_blur; one grouped separable conv for the batch."""
    b, c, hgt, wid = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, K)
    k = k.repeat_interleave(c, 0)  # (B·C, K): one kernel per channel of each sample
    y = x.reshape(1, b * c, hgt, wid)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.view(b, c, hgt, wid)


def gaussian_blur(
    x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Per-sample Gaussian blur (σ uniform in range) on a random subset."""
    b, _, hgt, wid = x.shape
    dev = x.device
    apply = _bernoulli(b, p, g, dev)
    sig = _uniform(b, sigma[0], sigma[1], g, dev)
    if p <= 0:
        return x
    radius = min(math.ceil(3 * sigma[1]), (min(hgt, wid) - 1) // 2)
    if radius < 1:
        return x
    return torch.where(apply.view(-1, 1, 1, 1), blur_with(x, sig, radius), x)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """torchvision's solarize on the images where `apply` (B,)."""
    return torch.where(apply.view(-1, 1, 1, 1) & (x >= threshold), 1 - x, x)


def _photometric(
    x: torch.Tensor, cfg: CropConfig, blur_p: float, solarize_p: float, g: torch.Generator
) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    x = color_jitter(x, cfg.jitter, cfg.jitter_p, g)
    gray = _bernoulli(b, cfg.grayscale_p, g, dev).view(-1, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    x = gaussian_blur(x, blur_p, cfg.blur_sigma, g)
    if solarize_p > 0:
        x = solarize(x, _bernoulli(b, solarize_p, g, dev))
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
        self,
        images: torch.Tensor,
        aspect: torch.Tensor,
        g: torch.Generator,
        sizes: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Make all views of a batch.

        Args:
            images: (B, 3, H, W) uint8 or float in [0, 1] canvas, on the device that should do
                the work.
            aspect: (B,) original width / height.
            g: generator on the same device.
            sizes: (B, 2) each image's (h, w) on the canvas; None = all fill it.
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
            crop = crop_resize(x, boxes, cfg.global_size, _bernoulli(b, 0.5, g, dev), sizes)
            views.append(_photometric(crop, cfg, blur_p, sol_p, g))
        if cfg.local_number:
            locals_ = [
                crop_resize(
                    x,
                    sample_boxes(aspect, cfg.local_scale, g),
                    cfg.local_size,
                    _bernoulli(b, 0.5, g, dev),
                    sizes,
                )
                for _ in range(cfg.local_number)
            ]
            views.append(_photometric(torch.cat(locals_), cfg, cfg.blur_p[2], 0.0, g))
        return views
