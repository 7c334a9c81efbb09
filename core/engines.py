"""Inference engines behind one protocol: ONNX Runtime (the default, here), torch
(core/torch_engine.py) and OpenVINO (core/openvino_engine.py, an optional extra); which one a
package is served by, `auto` included, and loading it: core/engine_choice.py.

Every engine takes the same preprocessed batch, (N, 3, H, W) float32 normalised (see
`preprocess_batch`), and returns L2-normalised float32 embeddings (N, D) and attention maps
(N, heads, h, w). Every engine is the model too (`PackagedModel`, the base they share): it
carries the package's `meta`, preprocesses images as DINO's k-NN evaluation does and embeds
decoded images, so no caller pairs an engine with its metadata again. torch, onnxruntime and
openvino are imported only by the engine that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core import package
from core.images import preprocess
from core.package import PackageMeta
from core.settings import InferenceSettings


@runtime_checkable
class Engine(Protocol):
    """A loaded model package: its card, its preprocessing and its network."""

    meta: package.PackageMeta

    @property
    def model_version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def preprocess(self, img: Image.Image) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def attention(self, batch: np.ndarray) -> np.ndarray: ...


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


class OrtEngine(PackagedModel):
    """ONNX Runtime on the best available provider (TensorRT → CUDA → CPU by default).

    Args:
        package_dir: a verified model package.
        settings: threads, provider preference and which ONNX variant (fp32 or int8).
    """

    runtime = "onnxruntime"

    def __init__(self, package_dir: Path, settings: InferenceSettings | None = None) -> None:
        import onnxruntime as ort

        s = settings or InferenceSettings()
        self.meta = package.read_meta(package_dir)
        package.require_variant(package_dir, self.meta, s.onnx_variant, "onnxruntime")
        self.variant = s.onnx_variant
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.intra_op_threads
        opts.inter_op_num_threads = s.inter_op_threads
        available = set(ort.get_available_providers())
        providers = [p for p in s.providers if p in available] or ["CPUExecutionProvider"]
        path = Path(package_dir) / self.meta.onnx[s.onnx_variant].file
        self.session = ort.InferenceSession(str(path), opts, providers=providers)

    def _run(self, batch: np.ndarray, output: str) -> np.ndarray:
        feed = {"images": np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([output], feed)[0]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(self._run(batch, "embedding"))

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, "attention").astype(np.float32, copy=False)
