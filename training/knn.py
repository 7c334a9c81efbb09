"""k-NN evaluation of a backbone as DINO's `eval_knn`: weighted vote of the k nearest neighbours."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

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


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised CLS features (N, D) and labels (N,) of a labelled dataset."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for x, y in loader:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            f = backbone(x.to(device, non_blocking=True))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(y)
    backbone.train(was_training)
    f, y = torch.cat(feats), torch.cat(labels)
    keep = y >= 0
    return f[keep], y[keep]


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN vote: class score = Σ exp(cos / T) over the k nearest neighbours of that class.

    Args:
        train_feats: (N, D) L2-normalised memory.
        train_labels: (N,) int labels.
        query_feats: (Q, D) L2-normalised queries.
    Returns:
        (Q, C) class scores normalised to sum 1 per query.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        sim = query_feats[start : start + chunk] @ train_feats.t()  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
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
    ) -> float:
        args = (batch_size, device, num_workers, autocast_dtype)
        tf, tl = extract_features(backbone, self.train, *args)
        vf, vl = extract_features(backbone, self.val, *args)
        return knn_accuracy(tf, tl, vf, vl, k, temperature)
