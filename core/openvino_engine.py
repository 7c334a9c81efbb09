"""The OpenVINO engine (`DINOSERVE_ENGINE=openvino`): Intel's CPU runtime on the package's own
files, behind the same `Engine` protocol as ONNX Runtime and torch.

OpenVINO reads the ONNX files directly: `fp32` (model.onnx), `int8-static` (the QDQ file, whose
Quantize/DequantizeLinear pairs its CPU plugin runs as int8 kernels) and `int8` (dynamic), and
its own IR for `int8-nncf` (training/nncf_int8.py). It runs in f32 unless the variant is int8:
on CPUs with AVX-512 BF16 OpenVINO would otherwise pick bf16 for float layers on its own, which
changes the embeddings without the accuracy guard having seen it.

openvino is an optional extra (`pip install '.[openvino]'`); it is imported when an engine is
built, and its absence is one clear error (core/extras.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import package
from core.engines import PackagedModel, l2_normalize
from core.extras import require_openvino
from core.settings import InferenceSettings


class OpenVinoEngine(PackagedModel):
    """OpenVINO's CPU plugin on one of the package's variants.

    Args:
        package_dir: a verified model package.
        settings: `intra_op_threads` (0 = OpenVINO's default) and `onnx_variant`.
    """

    runtime = "openvino"

    def __init__(self, package_dir: Path, settings: InferenceSettings | None = None) -> None:
        ov = require_openvino()
        s = settings or InferenceSettings()
        self.meta = package.read_meta(package_dir)
        package.require_variant(package_dir, self.meta, s.onnx_variant, "openvino")
        self.variant = s.onnx_variant
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if s.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = str(s.intra_op_threads)
        path = Path(package_dir) / self.meta.onnx[s.onnx_variant].file
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()  # engine calls are serial

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({"images": np.ascontiguousarray(batch, dtype=np.float32)})
        return out["embedding"], out["attention"]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalize(self._run(batch)[0])

    def attention(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(batch)[1], dtype=np.float32)
