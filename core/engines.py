"""Inference engines behind one protocol: ONNX Runtime (the default), torch and OpenVINO
(core/openvino_engine.py, an optional extra); `auto` serves what `dinoserve models bench`
measured fastest on this machine (core/engine_choice.py).

Both take the same preprocessed batch, (N, 3, H, W) float32 normalised (see `preprocess_batch`),
and return L2-normalised float32 embeddings (N, D) and attention maps (N, heads, h, w). Both are
the model too (core/model.py): `meta`, `preprocess` and `embed_images` for decoded images.
torch and onnxruntime are imported only by the engine that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core import package
from core.engine_choice import resolve_auto
from core.model import PackagedModel, l2_normalize, preprocess_batch
from core.settings import InferenceSettings
from core.torch_engine import TorchEngine  # torch itself is imported when one is built

__all__ = [
    "Engine",
    "OrtEngine",
    "TorchEngine",
    "l2_normalize",
    "load_engine",
    "preprocess_batch",
    "resolve_engine",
]


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


def resolve_engine(
    package_dir: Path, kind: str, settings: InferenceSettings | None = None
) -> tuple[str, InferenceSettings]:
    """The engine kind and settings that `kind` means for this package: "auto" becomes the
    choice `dinoserve models bench` recorded (core/engine_choice.py), with its variant."""
    s = settings or InferenceSettings()
    if kind != "auto":
        return kind, s
    engine, variant = resolve_auto(package_dir, package.read_meta(package_dir))
    return engine, s.model_copy(update={"onnx_variant": variant})


def load_engine(
    package_dir: Path,
    kind: str = "onnxruntime",
    settings: InferenceSettings | None = None,
    check: bool = True,
) -> Engine:
    """Verify a package's sha256s and open it with the engine `kind`.

    Args:
        package_dir: a package directory (see core.package.resolve for names).
        kind: "onnxruntime", "torch", "openvino" or "auto" (DINOSERVE_ENGINE).
        settings: engine settings (DINOSERVE_INFERENCE__*); with "auto" the variant is the
            recorded one.
        check: verify file hashes first (refuse a tampered package).
    """
    if check:
        package.verify(package_dir)
    kind, settings = resolve_engine(package_dir, kind, settings)
    if kind == "onnxruntime":
        return OrtEngine(package_dir, settings)
    if kind == "torch":
        return TorchEngine(package_dir, settings)
    if kind == "openvino":
        from core.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(package_dir, settings)
    raise ValueError(f"unknown engine {kind!r}: use onnxruntime, torch, openvino or auto")
