"""The fast data path: workers only read files; JPEGs are decoded in batches on the training device
(nvJPEG through torchvision on CUDA) and resized there. Other formats are decoded by the worker,
JPEGs the device decoder rejects are decoded on the CPU (PIL) here, so every readable image
arrives; only images no decoder can read are replaced by others of the batch.

On the CPU the same code runs with torchvision's CPU decoder, which is how it is tested.
"""

from __future__ import annotations

import io
import logging

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from training.data import (
    _DECODE_ERRORS,
    Batch,
    ImageList,
    UnreadableBatch,
    bounded_size,
    decode,
    pad_stack,
)

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112  # EXIF tag


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1–8) of an encoded image; 1 when absent. Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = int(img.getexif().get(_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded (3, H, W) image upright, as PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return x.rot90(-1, (-2, -1))
    if orientation == 7:
        return x.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return x.rot90(1, (-2, -1))
    return x


class EncodedImages(Dataset):
    """Items: ("jpeg", uint8 bytes tensor, EXIF orientation) for JPEG files, else
    ("pixels", (3, H, W) uint8, aspect) decoded here; ("bad", None) for unreadable files."""

    def __init__(self, images: ImageList, load_size: int, max_side: int = 0) -> None:
        self.images, self.load_size, self.max_side = images, load_size, max_side

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, i: int) -> tuple:
        path = self.images.files[i]
        try:
            data = path.read_bytes()
            if data[:3] == JPEG_MAGIC:
                tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return ("jpeg", tensor, exif_orientation(data))
            arr, aspect = decode(path, self.load_size, self.max_side)
            return ("pixels", torch.from_numpy(arr), aspect)
        except _DECODE_ERRORS:
            return ("bad", None)


def collate_encoded(items: list[tuple]) -> list[tuple]:
    """Keep the items as they are: decoding happens on the device, in `decode_batch`."""
    return items


def _resize(images: list[torch.Tensor], load_size: int, max_side: int) -> list[torch.Tensor]:
    """Squash to load_size² (load_size > 0) or shrink the long side to max_side, antialiased
    bicubic as the CPU path's PIL resize; images of one size are resized together."""
    out = list(images)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape[1:]), []).append(i)
    for (h, w), idx in by_shape.items():
        if load_size:
            size = (load_size, load_size)
        else:
            bw, bh = bounded_size(w, h, max_side)
            size = (bh, bw)
        if size == (h, w):
            continue
        x = torch.stack([images[i] for i in idx]).float()
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
        for n, i in enumerate(idx):
            out[i] = x[n]
    return out


def _decode_jpegs(items: list[tuple], idx: list[int], device: torch.device) -> dict[int, object]:
    """Decode on `device`; a JPEG the device decoder rejects maps to its bytes (for the CPU)."""
    data = [items[i][1] for i in idx]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return dict(zip(idx, images, strict=True))
    except RuntimeError:
        pass  # one bad JPEG fails the whole batched call: decode them one by one instead
    out: dict[int, object] = {}
    for i, d in zip(idx, data, strict=True):
        try:
            out[i] = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            log.debug("the device decoder rejects a JPEG (%s): decoding it on the CPU", exc)
            out[i] = d.numpy().tobytes()
    return out


def decode_batch(
    items: list[tuple], load_size: int, device: torch.device, max_side: int = 0
) -> Batch:
    """Decode a collated batch on `device`, as the CPU path would (see training/data.py).

    Args:
        load_size: > 0 squashes to load_size² (legacy); 0 keeps full resolution.
        max_side: bound on the long side at full resolution (0 = none).
    """
    jpeg_idx = [i for i, it in enumerate(items) if it[0] == "jpeg"]
    pixels: dict[int, torch.Tensor] = {}
    aspect: dict[int, float] = {}
    on_device: list[int] = []
    for i, got in (_decode_jpegs(items, jpeg_idx, device) if jpeg_idx else {}).items():
        if isinstance(got, torch.Tensor):
            # nvJPEG ignores EXIF orientation; the CPU path applies it, so this path does too.
            pixels[i] = apply_orientation(got, items[i][2])
            aspect[i] = pixels[i].shape[2] / pixels[i].shape[1]
            on_device.append(i)
            continue
        try:
            arr, aspect[i] = decode(got, load_size, max_side)
            pixels[i] = torch.from_numpy(arr).to(device, non_blocking=True)
        except _DECODE_ERRORS as exc:
            log.debug("skipping an unreadable JPEG: %s", exc)
    if on_device:
        resized = _resize([pixels[i] for i in on_device], load_size, max_side)
        for i, im in zip(on_device, resized, strict=True):
            pixels[i] = im
            if not load_size:  # full resolution: the geometry is the decoded image's, as on the CPU
                aspect[i] = im.shape[2] / im.shape[1]
    for i, it in enumerate(items):
        if it[0] == "pixels":
            pixels[i], aspect[i] = it[1].to(device, non_blocking=True), it[2]
    ok = sorted(pixels)
    if not ok:
        raise UnreadableBatch("a whole batch of images could not be decoded; is the data readable?")
    pick = [i if i in pixels else ok[n % len(ok)] for n, i in enumerate(range(len(items)))]
    images, sizes = pad_stack([pixels[i] for i in pick])
    return Batch(
        images=images,
        aspect=torch.tensor([aspect[i] for i in pick], dtype=torch.float32),
        sizes=sizes,
        failed=len(items) - len(ok),
    )
