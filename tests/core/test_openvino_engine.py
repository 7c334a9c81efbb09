"""The OpenVINO engine (core/openvino_engine.py) and NNCF's int8 variant; skipped without the
openvino extra, except the message that says how to install it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from core import package
from core.engine_choice import load_engine
from core.engines import preprocess_batch
from core.extras import EngineUnavailable, require_openvino
from core.settings import InferenceSettings
from training.synthetic import draw_shape

ONE = InferenceSettings(intra_op_threads=1, inter_op_threads=1)


def test_without_openvino_the_engine_says_how_to_install_it(monkeypatch, micro_package):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    with pytest.raises(EngineUnavailable, match=r"pip install '\.\[openvino\]'"):
        require_openvino()
    with pytest.raises(EngineUnavailable):
        load_engine(micro_package, "openvino", ONE)


@pytest.fixture(scope="module")
def batch(micro_package):
    rng = np.random.default_rng(4)
    return preprocess_batch(
        package.read_meta(micro_package), [draw_shape(c, rng, 48) for c in range(5)]
    )


def test_openvino_fp32_matches_onnxruntime(micro_package, batch):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    ov, ort = load_engine(micro_package, "openvino", ONE), load_engine(micro_package, "onnxruntime")
    np.testing.assert_allclose(ov.embed(batch), ort.embed(batch), atol=1e-5)
    np.testing.assert_allclose(ov.attention(batch), ort.attention(batch), atol=1e-5)
    assert ov.embed(batch[:1]).shape == (1, ov.dim)  # dynamic batch


def test_nncf_int8_is_an_openvino_variant_behind_the_guard(
    micro_run, synthetic_dir, tmp_path, batch
):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pytest.importorskip("nncf", reason="the openvino extra (nncf) is not installed")
    from training.export import export_run

    out = export_run(
        micro_run, tmp_path, "m", ["int8-static", "int8-nncf"], calibration=synthetic_dir
    )
    meta = package.verify(out)
    nncf_v = meta.onnx["int8-nncf"]
    assert nncf_v.format == "openvino" and nncf_v.file == package.OV_INT8_NNCF
    assert {"model.nncf.xml", "model.nncf.bin"} <= set(meta.files)
    assert nncf_v.guard["passed"] and nncf_v.guard["knn_queries"] > 0
    fp32 = load_engine(out, "onnxruntime", ONE).embed(batch)
    for variant in ("int8-nncf", "int8-static"):  # OpenVINO runs the QDQ file as int8 too
        s = ONE.model_copy(update={"onnx_variant": variant})
        got = load_engine(out, "openvino", s).embed(batch)
        assert (got * fp32).sum(axis=1).min() >= 0.995
    with pytest.raises(package.PackageError, match="DINOSERVE_ENGINE=openvino"):
        load_engine(out, "onnxruntime", ONE.model_copy(update={"onnx_variant": "int8-nncf"}))
