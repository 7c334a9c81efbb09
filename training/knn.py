"""k-NN evaluation of a backbone as DINO's `eval_knn`: weighted vote of the k nearest neighbours.

Under torchrun every rank extracts the features of its slice of the labelled images, the memory is
all-gathered (as the reference does) and every rank scores its own slice of the queries; the
counts are summed. The extraction is bounded in time, and the ranks agree after every batch on
whether to go on, so no rank ever waits in a collective for longer than one batch of another.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from core.images import preprocess
from training.data import _DECODE_ERRORS, ImageList

log = logging.getLogger(__name__)


class EvalImages(Dataset):
    """Labelled images with the serving preprocessing (resize, centre crop, normalise)."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_pct: float,
    ) -> None:
        self.files, self.labels = files, labels
        self.args = (size, mean, std, crop_pct)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        size, mean, std, crop_pct = self.args
        try:
            with Image.open(self.files[i]) as img:
                arr = preprocess(img, size, mean, std, crop_pct)
            return torch.from_numpy(arr), self.labels[i]
        except _DECODE_ERRORS:
            return torch.zeros(3, size, size), -1  # label -1: left out of the eval


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 0,
) -> torch.Tensor:
    """Weighted k-NN vote: class score = Σ exp(cos / T) over the k nearest neighbours of that class.

    Args:
        train_feats: (N, D) L2-normalised memory.
        train_labels: (N,) int labels.
        query_feats: (Q, D) L2-normalised queries.
        chunk: queries per similarity block; 0 = as many as keep a block ≤ 2^28 entries.
    Returns:
        (Q, C) class scores normalised to sum 1 per query.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    # Queries per similarity block: ≤ 2^28 entries (1 GiB in fp32) whatever the memory's size.
    chunk = chunk or max(1, min(1024, 2**28 // max(train_feats.shape[0], 1)))
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        sim = query_feats[start : start + chunk] @ train_feats.t()  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=sim.device)
        scores.scatter_add_(1, train_labels[top_idx], weights)
        out.append(scores / scores.sum(1, keepdim=True))
    return torch.cat(out)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in percent of the weighted k-NN vote."""
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    scores = knn_predict(train_feats, train_labels, val_feats, k, temperature, num_classes)
    return float((scores.argmax(1) == val_labels).float().mean() * 100)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(device: torch.device) -> torch.device:
    """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
    nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
    return device if nccl else torch.device("cpu")


@torch.no_grad()
def extract_shard(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    deadline: float,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """This rank's slice (every world-th image) of a labelled dataset, until `deadline`.

    Every rank runs the same number of loop turns; each turn starts with one all-reduce of "is
    any rank past the deadline", so all ranks stop at the same batch and none waits long.

    Args:
        deadline: time.monotonic() value after which no new batch starts.
    Returns:
        L2-normalised features (n, D) and labels (n,) on `device`, padded to turns × batch_size
        rows with label -1 (so the slices of all ranks have one shape), and whether it finished.
    """
    rank, world = _dist()
    n = len(dataset)  # type: ignore[arg-type]
    turns = math.ceil(math.ceil(n / world) / batch_size)
    mine = Subset(dataset, range(rank, n, world))
    batches = iter(DataLoader(mine, batch_size=batch_size, num_workers=num_workers))
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    comm = _comm_device(device)
    done = 0
    for _ in range(turns):
        stop = torch.tensor([float(time.monotonic() > deadline)], device=comm)
        if world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            break
        done += 1
        batch = next(batches, None)
        if batch is None:  # this rank's slice is one batch shorter than the longest
            continue
        x, y = batch
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            f = backbone(x.to(device, non_blocking=True))
        feats.append(F.normalize(f.float(), dim=-1))
        labels.append(y.to(device))
    backbone.train(was_training)
    dim = int(backbone.num_features)
    f = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    pad = done * batch_size - f.shape[0]
    f = torch.cat([f, f.new_zeros(pad, dim)])
    y = torch.cat([y, y.new_full((pad,), -1)])
    return f, y, done == turns


def _all_gather(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    world = _dist()[1]
    if world == 1:
        return t
    comm = _comm_device(device)
    parts = [torch.empty_like(t, device=comm) for _ in range(world)]
    dist.all_gather(parts, t.to(comm).contiguous())
    return torch.cat(parts).to(device)


class KnnEvaluator:
    """Holds a labelled memory and labelled queries; measures a backbone's k-NN top-1 on them."""

    def __init__(
        self,
        memory: ImageList,
        queries: ImageList,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_pct: float,
    ) -> None:
        if not memory.classes or memory.classes != queries.classes:
            raise ValueError("k-NN eval needs the same class folders in its memory and queries")
        self.num_classes = len(memory.classes)
        self.train = EvalImages(memory.files, memory.labels, size, mean, std, crop_pct)
        self.val = EvalImages(queries.files, queries.labels, size, mean, std, crop_pct)
        log.info("k-NN eval: %d labelled, %d queries", len(self.train), len(self.val))

    def __call__(
        self,
        backbone: nn.Module,
        device: torch.device,
        k: int,
        temperature: float,
        batch_size: int,
        num_workers: int = 0,
        autocast_dtype: torch.dtype | None = None,
        max_seconds: float = math.inf,
    ) -> float | None:
        """Top-1 in percent; every rank of a torchrun job must call it and gets the same value.

        Queries are extracted first, then the memory until `max_seconds` have passed; a run cut
        short is scored on what every rank finished (and says so in the log), or None when no
        labelled memory was extracted at all.
        """
        deadline = time.monotonic() + max_seconds
        args = (batch_size, device, deadline, num_workers, autocast_dtype)
        vf, vl, v_done = extract_shard(backbone, self.val, *args)
        tf, tl, t_done = extract_shard(backbone, self.train, *args)
        tf, tl = _all_gather(tf, device), _all_gather(tl, device)
        keep = tl >= 0
        tf, tl = tf[keep], tl[keep]
        counts = torch.zeros(2, device=_comm_device(device), dtype=torch.float64)
        mine = vl >= 0
        if tf.shape[0] and mine.any():
            scores = knn_predict(tf, tl, vf[mine], k, temperature, self.num_classes)
            counts[0] = float((scores.argmax(1) == vl[mine]).sum())
        counts[1] = float(mine.sum())
        if _dist()[1] > 1:
            dist.all_reduce(counts)
        if not (v_done and t_done):
            log.warning(
                "k-NN eval stopped at eval.max_seconds=%g: scored %d of %d queries against %d "
                "of %d labelled images",
                max_seconds,
                int(counts[1]),
                len(self.val),
                tf.shape[0],
                len(self.train),
            )
        if tf.shape[0] == 0 or counts[1] == 0:
            return None
        return float(counts[0] / counts[1] * 100)
