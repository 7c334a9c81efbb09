"""A deterministic stand-in for a model: embeddings from downscaled pixels, no weights needed."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from indexer.pipeline import Embedder

DIM = 12


def fake_embedder(delay_s: float = 0.0, version: str = "fake-v1") -> Embedder:
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(3 * 4 * 4, DIM)).astype(np.float32)

    def preprocess(img: Image.Image) -> np.ndarray:
        small = np.asarray(img.resize((4, 4), Image.Resampling.BILINEAR), np.float32) / 255.0
        return small.transpose(2, 0, 1)

    def embed(batch: np.ndarray) -> np.ndarray:
        if delay_s:
            time.sleep(delay_s)
        v = batch.reshape(len(batch), -1) @ proj
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return Embedder(embed, preprocess, version, DIM)
