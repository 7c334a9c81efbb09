"""The indexer on the engine's device: a batch of encoded images is decoded (nvJPEG for JPEGs)
and preprocessed on the GPU in one go (core/device_images.py), then embedded there in large
batches; only the (N, D) embeddings come back to the host.

It plugs into indexer/pipeline.py as the Indexer's `device`: `decode_many` (the producer
thread's decode of a whole batch, on its own CUDA stream so it overlaps the engine's work on the
previous batch), `stack` (rows → one device batch) and `embed` (that batch → embeddings).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from core.device_images import preprocess_encoded
from core.engines import Engine
from core.images import ImageRejected
from indexer.ingest import Limits


class DeviceDecode:
    """Decoding and preprocessing of whole batches on the engine's device.

    Args:
        engine: the loaded engine (the torch engine keeps the batch on its device; any other
            gets it as numpy); its `meta` says how to preprocess.
        tensor_decode: decode JPEGs with torchvision (None: where nvJPEG is, i.e. on CUDA).
    """

    def __init__(self, engine: Engine, tensor_decode: bool | None = None) -> None:
        self.engine, self.tensor_decode = engine, tensor_decode
        self.device: torch.device = getattr(engine, "device", torch.device("cpu"))
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None

    def decode_many(
        self, datas: list[bytes], limits: Limits
    ) -> list[tuple[torch.Tensor, int, int] | ImageRejected]:
        """(row (3, S, S) on the device, width, height) or why not, per encoded image."""
        m = self.engine.meta
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            out = preprocess_encoded(
                datas,
                img_size=m.img_size,
                mean=m.mean,
                std=m.std,
                crop_pct=m.crop_pct,
                device=self.device,
                max_pixels=limits.max_pixels,
                max_bytes=limits.max_bytes,
                tensor_decode=self.tensor_decode,
            )
        if self.stream is not None:
            self.stream.synchronize()  # this (producer) thread waits; the engine's work does not
        result: list[Any] = [None] * len(datas)
        for i, exc in out.rejected.items():
            result[i] = exc
        for n, i in enumerate(out.index):
            result[i] = (out.images[n], *out.sizes[n])
        return result

    def stack(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(rows)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings (N, D) of a stacked device batch, back on the host."""
        embed_tensor = getattr(self.engine, "embed_tensor", None)
        if embed_tensor is not None:
            return embed_tensor(batch).float().cpu().numpy()
        return self.engine.embed(batch.float().cpu().numpy())
