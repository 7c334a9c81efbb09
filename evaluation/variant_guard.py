"""The accuracy guard of a quantised variant against fp32, on real images.

A variant passes when, on images it was not calibrated on:
- every embedding's cosine to fp32 is ≥ `min_cosine` (0.995);
- every attention map's (per image and head) cosine to fp32 is ≥ `min_attention_cosine` (0.99):
  the served masks come from it, and quantisation hurts it first (training/static_int8.py);
- on labelled images, the k-NN top-1 (k=20, T=0.07, `evaluation.knn.knn_scores`; every other
  image of each class is the memory, the rest the queries) is at most `max_knn_drop` points
  below fp32's. A variant that scores higher than fp32 passes: the guard is about what
  quantisation loses.

A cosine alone can hide a loss that matters: 0.995 everywhere still moves neighbours that were
close calls. The k-NN figure says whether it moved them to the wrong class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from evaluation.knn import knn_scores

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # batch → (embedding, attention)
MIN_COSINE = 0.995
MIN_ATTENTION_COSINE = 0.99
MAX_KNN_DROP = 0.5  # top-1 points


@dataclass(frozen=True)
class GuardResult:
    """The guard's figures for one variant; `passed` and, when not, why."""

    min_cosine: float
    min_attention_cosine: float
    images: int
    knn_top1_fp32: float | None = None  # percent; None: no labels
    knn_top1: float | None = None
    knn_queries: int = 0
    passed: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _rows_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_forward(forward: Forward, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, ...]:
    """(embeddings L2-normalised, attention) of `images` in batches of `batch`."""
    embs, atts = [], []
    for i in range(0, len(images), batch):
        e, a = forward(images[i : i + batch])
        embs.append(e.astype(np.float32))
        atts.append(a.astype(np.float32))
    return _unit(np.concatenate(embs)), np.concatenate(atts)


def knn_top1(
    emb: np.ndarray, labels: list[str], k: int = 20, temperature: float = 0.07
) -> tuple[float, int]:
    """Top-1 (percent) of k-NN with every other image of each class as the labelled memory and
    the rest as the queries; and the number of queries."""
    seen: dict[str, int] = {}
    memory = np.zeros(len(labels), bool)
    for i, lab in enumerate(labels):
        memory[i] = seen.get(lab, 0) % 2 == 0
        seen[lab] = seen.get(lab, 0) + 1
    mem_labels = [lab for lab, m in zip(labels, memory, strict=True) if m]
    qry_labels = [lab for lab, m in zip(labels, memory, strict=True) if not m]
    top1, _ = knn_scores(emb[memory], mem_labels, emb[~memory], qry_labels, k, temperature)
    return 100.0 * float(top1.mean()), len(qry_labels)


def check_variant(
    reference: Forward | tuple[np.ndarray, np.ndarray],
    variant: Forward,
    images: np.ndarray,
    labels: list[str] | None = None,
    min_cosine: float = MIN_COSINE,
    min_attention_cosine: float = MIN_ATTENTION_COSINE,
    max_knn_drop: float = MAX_KNN_DROP,
) -> GuardResult:
    """Compare `variant` with the fp32 `reference` on `images` (see the module docstring).

    Args:
        reference: the fp32 forward, or its outputs on `images` already computed.
        variant: the quantised forward.
        images: preprocessed real images (N, 3, S, S), not the calibration ones.
        labels: their classes, for the k-NN part (None or one class: skipped).
        min_cosine: least embedding cosine to fp32.
        min_attention_cosine: least attention-map cosine to fp32.
        max_knn_drop: most k-NN top-1 points below fp32's.
    """
    ref = reference if isinstance(reference, tuple) else run_forward(reference, images)
    ref = (_unit(ref[0]), ref[1])
    got = run_forward(variant, images)
    cos = float(_rows_cosine(ref[0], got[0]).min())
    heads = ref[1].shape[1]
    att = float(
        _rows_cosine(
            ref[1].reshape(len(images) * heads, -1), got[1].reshape(len(images) * heads, -1)
        ).min()
    )
    fields: dict = {"min_cosine": cos, "min_attention_cosine": att, "images": len(images)}
    failed = []
    if cos < min_cosine:
        failed.append(f"embedding cosine {cos:.4f} < {min_cosine}")
    if att < min_attention_cosine:
        failed.append(f"attention cosine {att:.4f} < {min_attention_cosine}")
    if labels is not None and len(set(labels)) > 1 and len(images) >= 4:
        (base, queries), (mine, _) = knn_top1(ref[0], labels), knn_top1(got[0], labels)
        fields |= {"knn_top1_fp32": base, "knn_top1": mine, "knn_queries": queries}
        if mine < base - max_knn_drop:
            failed.append(f"k-NN top-1 {mine:.2f} % < fp32's {base:.2f} % − {max_knn_drop}")
    return GuardResult(**fields, passed=not failed, reason="; ".join(failed))
