"""Decoding and preprocessing on the engine's device: JPEGs decoded in batches with nvJPEG
(torchvision's `decode_jpeg(device="cuda")`), EXIF orientation, resize, centre crop and
normalisation as tensor ops. The same transform as core.images.preprocess (DINO's k-NN
evaluation), within the rounding of two bicubic implementations.

Anything the device path cannot take goes through the PIL path (core.images) instead, so every
image still arrives: non-JPEG formats, CMYK JPEGs, JPEGs the device decoder rejects, extreme
aspect ratios; and everything when there is no CUDA. Limits are those of decode_image: the pixel
count is read from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.images import MAX_ASPECT, ImageRejected, decode_image, preprocess

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


@dataclass
class DeviceBatch:
    """Preprocessed images of a list of encoded ones.

    images: (n, 3, S, S) float32 normalised, on the device, for the inputs in `index` (in order).
    sizes: (width, height) of each, after EXIF orientation (as decode_image reports them).
    rejected: input index → why it is not an image within the limits.
    fallback: how many went through the PIL path.
    """

    images: torch.Tensor
    index: list[int]
    sizes: list[tuple[int, int]]
    rejected: dict[int, ImageRejected] = field(default_factory=dict)
    fallback: int = 0


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1–8) to (C, H, W), as PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1).flip(-2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def _header(data: bytes, max_pixels: int, max_bytes: int | None) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a JPEG the device path can take, None for the PIL
    path; raises ImageRejected for a JPEG over the limits."""
    if data[:3] != JPEG_MAGIC or (max_bytes is not None and len(data) > max_bytes):
        return None
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # whatever the header parser raises: let the PIL path report it
        return None
    if w * h > max_pixels:
        raise ImageRejected(
            "too_large", f"{w}×{h} = {w * h} pixels is over the limit of {max_pixels}"
        )
    return w, h, orientation


def resize_crop_normalize(
    images: list[torch.Tensor],
    size: int,
    crop_pct: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """(3, H, W) uint8 images → (N, 3, size, size) float32: shorter side to size / crop_pct
    (bicubic, antialiased), centre crop, normalise. Images of one shape are resized together."""
    dev = images[0].device
    out = torch.empty(len(images), 3, size, size, dtype=torch.float32, device=dev)
    short = round(size / crop_pct)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault((im.shape[1], im.shape[2]), []).append(i)
    for (h, w), idx in by_shape.items():
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        x = torch.stack([images[i] for i in idx]).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        # PIL resizes to uint8: round and clamp the same way before normalising.
        out[idx] = x[:, :, top : top + size, left : left + size].round().clamp(0, 255)
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255
    return (out - m) / s


def _device_decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 (3, H, W) per JPEG on `device`, None where the decoder refuses it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad JPEG fails the whole batched call: decode them one by one instead.
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as exc:
                log.debug("device JPEG decoder refused an image: %s", exc)
                out.append(None)
        return out


def use_device_decode(mode: str, engine: object) -> bool:
    """A decode setting ("device", "cpu", or "auto" = the engine runs on CUDA) for `engine`."""
    if mode == "auto":
        return getattr(getattr(engine, "device", None), "type", "cpu") == "cuda"
    return mode == "device"


def nvjpeg_available(device: torch.device) -> bool:
    """Whether torchvision can decode JPEGs on `device` (CUDA with nvJPEG)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


def preprocess_encoded(
    datas: list[bytes],
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float,
    device: torch.device,
    max_pixels: int,
    max_bytes: int | None = None,
    tensor_decode: bool | None = None,
) -> DeviceBatch:
    """Decode and preprocess encoded images for a model, on `device` where possible.

    Args:
        datas: encoded images (untrusted).
        img_size, mean, std, crop_pct: the package's preprocessing (model.json).
        device: where the batch is made (and left).
        max_pixels, max_bytes: the limits of core.images.decode_image.
        tensor_decode: decode JPEGs with torchvision on `device` (None: on CUDA with nvJPEG;
            True on the CPU uses torchvision's CPU decoder, which is how it is tested).
    """
    use_tensor = nvjpeg_available(device) if tensor_decode is None else tensor_decode
    rejected: dict[int, ImageRejected] = {}
    jpeg: dict[int, tuple[int, int, int]] = {}
    if use_tensor:
        for i, d in enumerate(datas):
            try:
                head = _header(d, max_pixels, max_bytes)
            except ImageRejected as exc:
                rejected[i] = exc
                continue
            if head is not None and max(head[0], head[1]) <= MAX_ASPECT * min(head[0], head[1]):
                jpeg[i] = head
    crops: dict[int, torch.Tensor] = {}
    sizes: dict[int, tuple[int, int]] = {}
    if jpeg:
        order = sorted(jpeg)
        decoded = _device_decode([datas[i] for i in order], device)
        good = [
            (i, orient(im, jpeg[i][2]))
            for i, im in zip(order, decoded, strict=True)
            if im is not None
        ]
        if good:
            batch = resize_crop_normalize([im for _, im in good], img_size, crop_pct, mean, std)
            for n, (i, im) in enumerate(good):
                crops[i], sizes[i] = batch[n], (im.shape[2], im.shape[1])
    fallback = 0
    for i, d in enumerate(datas):
        if i in crops or i in rejected:
            continue
        fallback += 1
        try:
            img = decode_image(d, max_pixels, max_bytes)
        except ImageRejected as exc:
            rejected[i] = exc
            continue
        arr = preprocess(img, img_size, mean, std, crop_pct)
        crops[i], sizes[i] = torch.from_numpy(arr).to(device), img.size
    index = sorted(crops)
    images = (
        torch.stack([crops[i] for i in index])
        if index
        else torch.empty(0, 3, img_size, img_size, device=device)
    )
    return DeviceBatch(images, index, [sizes[i] for i in index], rejected, fallback)


def to_numpy(batch: DeviceBatch) -> np.ndarray:
    """The batch as the engines' numpy input (N, 3, S, S) float32."""
    return batch.images.float().cpu().numpy()
