"""Static int8 of the exported graph with ONNX Runtime's own tools: activation ranges calibrated
on real images (`quantize_static` fed by a `CalibrationDataReader`), QDQ format, per-channel
int8 weights.

Dynamic int8 (training/onnx_export.py: `quantize_int8`) measures each activation's range on every
call and quantises the weight MatMuls only. Static int8 fixes the ranges once, from a few hundred
images of the collection, so no call pays for the range pass, and ONNX Runtime fuses each
DequantizeLinear → MatMul → QuantizeLinear into one int8 kernel.

What stays in float, and why:
- **The attention path** (every Softmax and the two activation × activation products around it,
  q·kᵀ and softmax·v). A softmax output is a distribution over 197 tokens whose typical weight
  is ~1/197: one int8 step of a [0, 1] range (1/255) is as large as the weight itself, so most of
  each row rounds to 0 or to one step. The `attention` output *is* such a softmax (the last
  block's CLS row), and every block's mixing of values goes through one. These products are
  ~8 % of ViT-S/16's FLOPs (2 · 197² · 384 · 2 per block, of 9.2 GFLOP), so keeping them in fp32
  costs little speed. `attention_nodes` names them; `quantize_int8_static(exclude_attention=False)`
  quantises them too, for the comparison (tests/training/test_static_int8.py).
- **uint8 activations, int8 per-channel weights (U8S8)**: ONNX Runtime's int8 GEMM is fast for
  that pair only (see `quantize_int8_static`).
- **The patch-embedding Conv**, as in the dynamic variant: int8 Conv is a slow kernel on many
  CPUs and the Conv is a small share of the work.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

CALIBRATION_BATCH = 8  # images per calibration call: ranges are maxima over all calls


def attention_nodes(model: onnx.ModelProto) -> list[str]:
    """Every Softmax, and every MatMul whose two inputs are both activations: the attention
    products q·kᵀ and softmax·v, of every block and of the CLS map. A value computed from
    weights alone (e.g. a transposed weight, before constant folding) counts as a weight."""
    const = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # topological order: constness propagates forward
        if all(i in const or not i for i in node.input):
            const.update(node.output)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Softmax"
        or (n.op_type == "MatMul" and not any(i in const for i in n.input))
    ]


def calibration_reader(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> Any:
    """ONNX Runtime's `CalibrationDataReader` over preprocessed images (N, 3, S, S) float32,
    `batch` at a time, with the length and ranges that strided calibration asks for
    (onnxruntime.quantization is imported here, on first use)."""
    from onnxruntime.quantization import CalibrationDataReader

    starts = list(range(0, len(images), batch))

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pos, self.end = 0, len(starts)

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, min(end_index, len(starts))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            x = images[starts[self.pos] : starts[self.pos] + batch]
            self.pos += 1
            return {"images": np.ascontiguousarray(x, dtype=np.float32)}

        def rewind(self) -> None:
            self.pos, self.end = 0, len(starts)

    return ArrayReader()


def quantize_int8_static(
    fp32: Path, out: Path, calibration: np.ndarray, exclude_attention: bool = True
) -> list[str]:
    """Write the static int8 (QDQ, per-channel weights) version of `fp32` to `out`.

    Args:
        fp32: the exported float model (model.onnx).
        out: where to write the int8 model.
        calibration: real images through the package's preprocessing, (N, 3, S, S) float32;
            a few hundred are enough (the ranges are the min/max over them).
        exclude_attention: leave the attention path in float (see the module docstring).
    Returns:
        The names of the nodes left in float besides the Conv.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + ORT's fusions, as for dynamic
        model = onnx.load(str(pre))
        excluded = attention_nodes(model) if exclude_attention else []
        quantize_static(
            str(pre),
            str(out),
            calibration_reader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            # uint8 activations, int8 weights (U8S8): ORT's QLinearMatMul runs u8·s8 on the
            # VNNI path, and s8·s8 12× slower (27 vs 319 GOP/s, 1 thread, ViT-S/16's MLP
            # shape, AMD Zen 4). On AVX2 without VNNI u8·s8 can saturate; the guard catches it.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            # The calibrator keeps every tensor of the model for every image it has seen until
            # it folds them into min/max ranges (tens of GB for 256 ViT-S/16 images at 224 px);
            # strided calibration folds after each batch. (CalibMaxIntermediateOutputs, the
            # other knob, drops the tensors without folding them in ORT 1.32.)
            extra_options={"CalibStridedMinMax": 1},
        )
    onnx.checker.check_model(str(out), full_check=True)
    return excluded
