"""What every engine is besides its tensor calls: a model package's card and its preprocessing.

An engine (core/engines.py, core/torch_engine.py, the HTTP worker's api/engine_client.py) is
the model: it carries the package's `meta`, preprocesses images as DINO's k-NN evaluation does
(see `preprocess_batch`) and embeds them, so no caller pairs an engine with its metadata again.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.images import preprocess
from core.package import PackageMeta


def preprocess_batch(meta: PackageMeta, images: list[Image.Image]) -> np.ndarray:
    """DINO's evaluation transform for a package's image size, mean/std and crop_pct, stacked."""
    return np.stack(
        [preprocess(im, meta.img_size, meta.mean, meta.std, meta.crop_pct) for im in images]
    )


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class PackagedModel:
    """The model side an engine shares: identity from `meta`, preprocessing, image embedding.

    Subclasses set `meta` and implement `embed` and `attention` on preprocessed batches
    (N, 3, H, W) float32.
    """

    meta: PackageMeta
    # What runs it, once DINOSERVE_ENGINE=auto is resolved: the runtime ("onnxruntime", "torch",
    # "openvino"; "" when not one of these, e.g. a test's fake) and the model file it runs
    # (the package variant, or torch's dtype). /healthz, /model and the metrics report them.
    runtime: str = ""
    variant: str = "fp32"

    @property
    def model_version(self) -> str:
        """Stored with every point and in the name of a physical collection."""
        return self.meta.version

    @property
    def dim(self) -> int:
        return self.meta.embed_dim

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One decoded RGB image → (3, H, W) float32, normalised for this package."""
        return preprocess_batch(self.meta, [img])[0]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Decoded images → L2-normalised float32 embeddings (N, D)."""
        return self.embed(np.stack([self.preprocess(im) for im in images]))
