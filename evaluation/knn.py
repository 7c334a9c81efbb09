"""Weighted k-NN of DINO's `eval_knn.py` on a packaged model, with the service's own vote.

The labelled memory (`train`) and the queries (`val`) are embedded by the engine the service
runs; each query's k nearest memory points are found exactly (a matrix product, not the store's
approximate index, so the score belongs to the backbone alone) and vote with core.knn.knn_vote,
weight exp(cos / T). Top-5 counts a query right when its class is among the five best scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.engines import Engine
from core.knn import knn_vote
from evaluation.embed import embed_entries
from evaluation.sources import EvalError, labels_of, list_entries

CHUNK = 1024  # queries per similarity block: (CHUNK, N_train) float32 stays small


@dataclass(frozen=True)
class KnnResult:
    model_version: str
    top1: float  # percent
    top5: float
    k: int
    temperature: float
    n_train: int
    n_val: int
    classes: int
    per_class_top1: dict[str, float]
    skipped: list[str] = field(default_factory=list)  # undecodable images, left out
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"k-NN (k={self.k}, T={self.temperature}) of {self.model_version}: "
            f"top-1 {self.top1:.2f} %, top-5 {self.top5:.2f} % "
            f"({self.n_val} queries, {self.n_train} labelled, {self.classes} classes)"
        )


def knn_scores(
    memory: np.ndarray,
    memory_labels: list[str],
    queries: np.ndarray,
    query_labels: list[str],
    k: int = 20,
    temperature: float = 0.07,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: right at top-1, right within the top 5 (bool arrays).

    Args:
        memory: (N, D) L2-normalised labelled embeddings.
        memory_labels: N labels.
        queries: (M, D) L2-normalised query embeddings.
        query_labels: M true labels.
        k: neighbours that vote (at most N).
        temperature: T of the exp(cos / T) weights.
    """
    k = min(k, len(memory))
    top1 = np.zeros(len(queries), bool)
    top5 = np.zeros(len(queries), bool)
    labels = np.asarray(memory_labels, dtype=object)
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ memory.T  # (B, N)
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for row, (cols, s) in enumerate(zip(nn, sims, strict=True)):
            vote = knn_vote(s[cols].tolist(), labels[cols].tolist(), temperature)
            truth = query_labels[start + row]
            top1[start + row] = vote.label == truth
            top5[start + row] = truth in list(vote.scores)[:5]
    return top1, top5


def evaluate_knn(
    engine: Engine,
    train: Path,
    val: Path,
    k: int = 20,
    temperature: float = 0.07,
    batch: int = 64,
    progress: bool = True,
) -> KnnResult:
    """Embed both labelled sources with `engine` and score the queries by k-NN.

    Args:
        engine: a loaded package (core.engine_choice.load_engine).
        train: folder or tar of class folders: the labelled memory.
        val: folder or tar of class folders: the queries.
        k: neighbours that vote (20 as in the service and DINO).
        temperature: T of the vote (0.07).
        batch: images per engine call.
        progress: show progress bars (stderr).
    Raises:
        EvalError: a source is empty, unlabelled, or shares no class with the other.
    """
    if k < 1 or temperature <= 0:
        raise EvalError(f"k must be ≥ 1 and the temperature > 0 (got k={k}, T={temperature})")
    t0 = time.perf_counter()
    tr_entries, va_entries = list_entries(train), list_entries(val)
    tr_labels, va_labels = labels_of(tr_entries, train), labels_of(va_entries, val)
    unknown = sorted(set(va_labels) - set(tr_labels))
    if len(unknown) == len(set(va_labels)):
        raise EvalError(
            f"{val} and {train} share no class (queries: {', '.join(sorted(set(va_labels))[:5])}"
            f"; labelled: {', '.join(sorted(set(tr_labels))[:5])})"
        )
    skipped: list[str] = []
    mem, mem_idx = embed_entries(engine, train, tr_entries, batch, progress, skipped)
    qry, qry_idx = embed_entries(engine, val, va_entries, batch, progress, skipped)
    if not len(mem) or not len(qry):
        raise EvalError("no image of the sources could be decoded")
    mem_labels = [tr_labels[i] for i in mem_idx]
    qry_labels = [va_labels[i] for i in qry_idx]
    top1, top5 = knn_scores(mem, mem_labels, qry, qry_labels, k, temperature)
    per_class = {
        c: round(100.0 * float(top1[[lab == c for lab in qry_labels]].mean()), 2)
        for c in sorted(set(qry_labels))
    }
    return KnnResult(
        model_version=engine.model_version,
        top1=round(100.0 * float(top1.mean()), 2),
        top5=round(100.0 * float(top5.mean()), 2),
        k=k,
        temperature=temperature,
        n_train=len(mem),
        n_val=len(qry),
        classes=len(set(mem_labels)),
        per_class_top1=per_class,
        skipped=skipped,
        seconds=round(time.perf_counter() - t0, 2),
    )
