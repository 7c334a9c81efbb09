"""The fast data path: workers only read files; JPEGs are decoded in batches on the training device
(nvJPEG through torchvision on CUDA) and resized there. Other formats, and JPEGs the device
decoder rejects, are decoded by the worker or on the CPU, so every image still arrives.

On the CPU the same code runs with torchvision's CPU decoder, which is how it is tested.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from training.data import _DECODE_ERRORS, Batch, ImageList, UnreadableBatch, decode_square

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImages(Dataset):
    """Items: ("jpeg", uint8 bytes tensor) for JPEG files, else ("pixels", (3,S,S) uint8, aspect);
    ("bad", None) for unreadable files."""

    def __init__(self, images: ImageList, load_size: int) -> None:
        self.images, self.load_size = images, load_size

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, i: int) -> tuple:
        path = self.images.files[i]
        try:
            data = path.read_bytes()
            if data[:3] == JPEG_MAGIC:
                return ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8))
            arr, aspect = decode_square(path, self.load_size)
            return ("pixels", torch.from_numpy(arr), aspect)
        except _DECODE_ERRORS:
            return ("bad", None)


def collate_encoded(items: list[tuple]) -> list[tuple]:
    """Keep the items as they are: decoding happens on the device, in `decode_batch`."""
    return items


def _resize_square(images: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) uint8 images of any sizes → (B, 3, size, size) uint8 and (B,) aspect ratios.

    Images of the same size are resized together (one antialiased kernel per distinct size).
    """
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=images[0].device)
    aspect = torch.tensor([im.shape[2] / im.shape[1] for im in images], dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape[1:]), []).append(i)
    for (h, w), idx in by_shape.items():
        x = torch.stack([images[i] for i in idx])
        if (h, w) != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        out[idx] = x
    return out, aspect


def decode_batch(items: list[tuple], load_size: int, device: torch.device) -> Batch:
    """Decode a collated batch on `device`; bad images are replaced by good ones of the batch."""
    jpeg_idx = [i for i, it in enumerate(items) if it[0] == "jpeg"]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg_idx:
        data = [items[i][1] for i in jpeg_idx]
        try:
            for i, im in zip(
                jpeg_idx, decode_jpeg(data, mode=ImageReadMode.RGB, device=device), strict=True
            ):
                decoded[i] = im
        except RuntimeError:
            # One bad JPEG fails the whole batched call: decode them one by one instead.
            for i, d in zip(jpeg_idx, data, strict=True):
                try:
                    decoded[i] = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
                except RuntimeError as exc:
                    log.debug("skipping a JPEG the decoder rejects: %s", exc)
    good = sorted(decoded)
    square, aspect = _resize_square([decoded[i] for i in good], load_size) if good else (None, None)
    slots: dict[int, tuple[torch.Tensor, float]] = {}
    for n, i in enumerate(good):
        slots[i] = (square[n], float(aspect[n]))
    for i, it in enumerate(items):
        if it[0] == "pixels":
            slots[i] = (it[1].to(device, non_blocking=True), it[2])
    ok = sorted(slots)
    if not ok:
        raise UnreadableBatch("a whole batch of images could not be decoded; is the data readable?")
    pick = [i if i in slots else ok[n % len(ok)] for n, i in enumerate(range(len(items)))]
    return Batch(
        images=torch.stack([slots[i][0] for i in pick]),
        aspect=torch.tensor([slots[i][1] for i in pick], dtype=torch.float32),
        failed=len(items) - len(ok),
    )
