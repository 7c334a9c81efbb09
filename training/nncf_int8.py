"""OpenVINO's int8: NNCF post-training quantisation of the exported graph, on the same
calibration images as static int8, saved as OpenVINO IR (`model.nncf.xml` + `.bin`).

`model_type=TRANSFORMER` is NNCF's scheme for transformers: it leaves the softmax, LayerNorm and
GELU in float and quantises the weight MatMuls (and the attention products, where its patterns
say so), as OpenVINO's CPU plugin runs them in int8. Needs the `openvino` extra
(`pip install '.[openvino]'`: openvino and nncf); imported only when this variant is asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.extras import missing, require_openvino
from evaluation.variant_guard import Forward

CALIBRATION_BATCH = 8


def quantize_nncf(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Write NNCF's int8 of the ONNX model `fp32` as OpenVINO IR at `out` (an .xml).

    Args:
        fp32: the exported float model (model.onnx).
        out: the IR's .xml path; its weights go to the .bin beside it.
        calibration: real images through the package's preprocessing, (N, 3, S, S) float32.
    """
    ov = require_openvino()
    try:
        import nncf
    except ImportError as exc:
        raise missing("nncf") from exc

    nncf.set_log_level(logging.WARNING)  # its INFO lines and progress bars drown the CLI's log
    model = ov.Core().read_model(str(fp32))
    batches = [
        np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH], dtype=np.float32)
        for i in range(0, len(calibration), CALIBRATION_BATCH)
    ]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),  # items of the dataset: all of them
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)


def ov_forward(path: Path, threads: int = 0) -> Forward:
    """The (embedding, attention) forward of an OpenVINO model file (IR or ONNX) in f32."""
    ov = require_openvino()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return lambda x: (lambda r: (r["embedding"], r["attention"]))(compiled(x))
