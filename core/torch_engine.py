"""The torch engine: CUDA in bf16 with fused (SDPA) attention, optionally compiled for a fixed
set of batch sizes, or the CPU in fp32 through the same code.

torch.compile specialises on shapes: a service that ran every batch size the micro-batcher
happens to form would recompile again and again. So a batch is padded up to the next *bucket*
(1, 2, 4, … by default), each bucket is compiled and run once at start-up (`warmup`), and the
first requests never pay a compile. Padding rows are zeros and are dropped from the result;
rows of a ViT batch do not interact, so the real rows are unchanged by it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core import package
from core.engines import PackagedModel, l2_normalize
from core.settings import InferenceSettings

log = logging.getLogger(__name__)


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `n` rows (the largest bucket when none does)."""
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def chunks(n: int, buckets: list[int]) -> list[tuple[int, int, int]]:
    """Split `n` rows into (start, stop, padded size) runs: full largest buckets, then the rest
    padded to its bucket."""
    out, start, top = [], 0, buckets[-1]
    while start < n:
        stop = min(n, start + top)
        out.append((start, stop, bucket_for(stop - start, buckets)))
        start = stop
    return out


class TorchEngine(PackagedModel):
    """The package's network in PyTorch (see core.vit.EmbedAttention).

    Args:
        package_dir: a verified model package (uses backbone.safetensors).
        settings: device, dtype on CUDA, torch.compile, CUDA graphs, buckets and warm-up.
    """

    runtime = "torch"

    def __init__(self, package_dir: Path, settings: InferenceSettings | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        from core.vit import EmbedAttention, build_vit

        s = settings or InferenceSettings()
        self.meta = package.read_meta(package_dir)
        cuda = torch.cuda.is_available() and s.device != "cpu"
        if s.device == "cuda" and not cuda:
            raise RuntimeError("inference.device=cuda but no CUDA device is available")
        if s.intra_op_threads:
            torch.set_num_threads(s.intra_op_threads)
        self.device = torch.device("cuda" if cuda else "cpu")
        # fp32 on the CPU (bf16 matmuls there are slow and lose accuracy for nothing).
        self.dtype = getattr(torch, s.cuda_dtype) if cuda else torch.float32
        self.autocast = self.dtype != torch.float32
        self.variant = s.cuda_dtype if self.autocast else "fp32"
        vit = build_vit(self.meta.arch, self.meta.timm_kwargs)
        vit.load_state_dict(load_file(Path(package_dir) / package.WEIGHTS), strict=True)
        for blk in getattr(vit, "blocks", []):
            # timm's fused path: F.scaled_dot_product_attention (flash / memory-efficient
            # kernels on CUDA). The CLS map of the last block is computed on its own.
            if hasattr(blk.attn, "fused_attn"):
                blk.attn.fused_attn = True
        self.net: Any = EmbedAttention(vit, self.meta.views).to(self.device).eval()
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.compiled = s.torch_compile
        if self.compiled:
            mode = "reduce-overhead" if s.cuda_graphs and cuda else "default"
            self.net = torch.compile(self.net, mode=mode, dynamic=False)
        pad = s.pad_to_buckets if s.pad_to_buckets is not None else self.compiled
        self.buckets: list[int] = sorted(s.buckets) if pad else []
        self.warmup_s = 0.0
        if s.warmup and self.buckets and (self.compiled or cuda):
            self.warmup_s = self.warm()

    def warm(self) -> float:
        """Run every bucket once (compiling each shape); returns the seconds it took."""
        import torch

        t0 = time.perf_counter()
        size = self.meta.img_size
        for b in self.buckets:
            self.forward_tensor(torch.zeros(b, 3, size, size, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - t0
        log.info("warmed batch sizes %s in %.1f s", self.buckets, took)
        return took

    def _run(self, x):
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.dtype, enabled=self.autocast),
        ):
            emb, attn = self.net(x)
        return emb.float(), attn.float()

    def forward_tensor(self, x):
        """(N, 3, H, W) float tensor (any device) → (embedding (N, D), attention (N, heads,
        h, w)) float32 tensors on the engine's device, padded to buckets where configured."""
        import torch

        x = x.to(self.device, torch.float32, non_blocking=True)
        if not self.buckets:
            return self._run(x)
        embs, attns = [], []
        for start, stop, padded in chunks(len(x), self.buckets):
            part = x[start:stop]
            if padded > stop - start:
                part = torch.cat([part, part.new_zeros(padded - (stop - start), *x.shape[1:])])
            emb, attn = self._run(part)
            # Clone: with CUDA graphs the outputs live in memory the next replay overwrites.
            embs.append(emb[: stop - start].clone())
            attns.append(attn[: stop - start].clone())
        return torch.cat(embs), torch.cat(attns)

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory()
        emb, attn = self.forward_tensor(x)
        return emb.cpu().numpy(), attn.cpu().numpy()

    def embed_tensor(self, x):
        """L2-normalised embeddings of a tensor batch, left on the device (the indexer's path)."""
        import torch

        return torch.nn.functional.normalize(self.forward_tensor(x)[0], dim=-1)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(self._forward(batch)[0])

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch)[1]
