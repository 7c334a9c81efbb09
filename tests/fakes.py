"""The one fake engine of the tests: deterministic embeddings of downscaled pixels, no weights.

It is an engine like core/engines.py's (its PackagedModel: `meta`, `preprocess`,
`embed_images`), so the indexer, refresh and service code under test take it as they are.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from core.engines import PackagedModel
from core.package import PackageMeta

DIM = 12


def fake_meta(version: str = "fake-v1") -> PackageMeta:
    """A model card for a 4 px 'network' with DIM-dimensional embeddings."""
    return PackageMeta(
        name="fake",
        version=version,
        arch="fake",
        timm_kwargs={},
        img_size=4,
        patch_size=4,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        crop_pct=1.0,
        embed_dim=DIM,
        num_heads=1,
        grid=(1, 1),
        onnx={},
    )


class FakeEngine(PackagedModel):
    """Embeddings = a fixed random projection of the 4×4 thumbnail, L2-normalised.

    Args:
        delay_s: sleep per engine call (a slow model, for tests that interrupt a run).
        version: the model version it reports.
    """

    def __init__(self, delay_s: float = 0.0, version: str = "fake-v1") -> None:
        self.meta, self.delay_s = fake_meta(version), delay_s
        self.proj = np.random.default_rng(0).normal(size=(3 * 4 * 4, DIM)).astype(np.float32)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        small = np.asarray(img.resize((4, 4), Image.Resampling.BILINEAR), np.float32) / 255.0
        return small.transpose(2, 0, 1)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        v = batch.reshape(len(batch), -1) @ self.proj
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 1, 1, 1), 1.0, np.float32)
