"""The k-NN vote of DINO's `eval_knn`: each of the k nearest labelled neighbours votes for its
class with weight exp(similarity / T); class scores are normalised to sum 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vote:
    label: str
    confidence: float
    scores: dict[str, float]  # every class among the neighbours, highest first; sums to 1


def knn_vote(similarities: Sequence[float], labels: Sequence[str], temperature: float) -> Vote:
    """Class scores Σ exp(sim / T) over the neighbours of each class, normalised to sum 1.

    Args:
        similarities: cosine similarity of the query to each neighbour.
        labels: each neighbour's label (same length).
        temperature: T > 0; small T lets the nearest neighbours dominate.
    Returns:
        The winning label (ties: the alphabetically first), its score and all scores.
    """
    if len(similarities) != len(labels) or not labels:
        raise ValueError("need one label per similarity, and at least one neighbour")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sims = np.asarray(similarities, np.float64)
    # Subtracting the maximum leaves the normalised scores unchanged and keeps exp() finite
    # (sim / T reaches 1 / 0.001 = 1000 for T at its smallest useful values).
    # A tiny T sends the others' exponents to -inf (weight 0), which is the limit wanted.
    with np.errstate(over="ignore", under="ignore"):
        weights = np.exp((sims - sims.max()) / temperature)
    totals: dict[str, float] = {}
    for label, w in zip(labels, weights, strict=True):
        totals[label] = totals.get(label, 0.0) + float(w)
    norm = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    scores = {label: total / norm for label, total in ranked}
    best = ranked[0][0]
    return Vote(best, scores[best], scores)
