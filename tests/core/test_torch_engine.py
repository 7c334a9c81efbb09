"""The torch engine: buckets and padding, parity with ONNX Runtime, compiled CUDA (gpu)."""

import numpy as np
import pytest
from PIL import Image

from core import package
from core.engine_choice import load_engine
from core.engines import preprocess_batch
from core.settings import InferenceSettings
from core.torch_engine import TorchEngine, bucket_for, chunks
from training.synthetic import draw_shape

ONE = InferenceSettings(intra_op_threads=1, inter_op_threads=1)


@pytest.fixture(scope="module")
def batch(micro_package) -> np.ndarray:
    rng = np.random.default_rng(5)
    pics = [draw_shape(c % 10, rng, 48) for c in range(7)]
    pics.append(Image.new("RGB", (50, 30), (10, 200, 90)))
    return preprocess_batch(package.read_meta(micro_package), pics)


def test_buckets_and_chunks():
    buckets = [1, 2, 4, 8]
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 8]
    assert chunks(3, buckets) == [(0, 3, 4)]
    assert chunks(19, buckets) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]
    assert chunks(0, buckets) == []


def test_bad_buckets_are_refused_at_start():
    for bad in ([], [4, 2], [0, 1], [1, 1, 2], [8192]):
        with pytest.raises(ValueError, match="buckets"):
            InferenceSettings(buckets=bad)


def test_padding_to_buckets_changes_nothing(micro_package, batch):
    plain = TorchEngine(micro_package, ONE)
    padded = TorchEngine(
        micro_package, ONE.model_copy(update={"pad_to_buckets": True, "buckets": [1, 2, 4]})
    )
    assert plain.buckets == [] and padded.buckets == [1, 2, 4]
    assert plain.device.type == "cpu" and not plain.autocast  # CPU: fp32
    for rows in (batch[:1], batch[:3], batch):  # 3 → padded to 4; 8 → 4 + 4
        np.testing.assert_allclose(padded.embed(rows), plain.embed(rows), atol=1e-5)
        np.testing.assert_allclose(padded.attention(rows), plain.attention(rows), atol=1e-6)


def test_torch_matches_onnx_runtime(micro_package, batch):
    ort = load_engine(micro_package, "onnxruntime", ONE)
    torch_ = load_engine(
        micro_package, "torch", ONE.model_copy(update={"pad_to_buckets": True, "buckets": [4]})
    )
    cos = (ort.embed(batch) * torch_.embed(batch)).sum(axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(torch_.attention(batch), ort.attention(batch), atol=1e-5)


def test_fused_attention_is_on(micro_package):
    engine = TorchEngine(micro_package, ONE)
    assert all(blk.attn.fused_attn for blk in engine.net.model.blocks)


@pytest.mark.gpu
def test_cuda_bf16_compiled_buckets_match_fp32(micro_package, batch):
    cpu = TorchEngine(micro_package, ONE.model_copy(update={"device": "cpu"}))
    gpu = TorchEngine(
        micro_package,
        InferenceSettings(device="cuda", torch_compile=True, buckets=[1, 4, 8]),
    )
    assert gpu.device.type == "cuda" and gpu.autocast and gpu.warmup_s > 0
    cos = (cpu.embed(batch[:5]) * gpu.embed(batch[:5])).sum(axis=1)  # 5 → padded to 8
    assert cos.min() >= 0.999, cos
