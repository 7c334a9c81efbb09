"""DINOSERVE_ENGINE=auto and `dinoserve models bench` (core/engine_choice.py,
evaluation/variant_bench.py) on a copy of the micro package."""

from __future__ import annotations

import json
import logging

import pytest

from core import package
from core.engine_choice import ChoiceError, load_engine, read_record, record_path, resolve_auto
from core.engines import OrtEngine
from core.settings import InferenceSettings
from dinoserve.cli import main


@pytest.fixture
def registry(micro_package, tmp_path):
    """A registry of its own holding the micro package (fp32 + int8)."""
    pkg = package.install(micro_package, tmp_path / "models", "micro")
    return tmp_path / "models", pkg


def test_auto_without_a_record_serves_ort_fp32_and_says_so(registry, caplog):
    _, pkg = registry
    with caplog.at_level(logging.INFO, logger="core.engine_choice"):
        engine = load_engine(pkg, "auto", InferenceSettings(intra_op_threads=1))
    assert isinstance(engine, OrtEngine)
    assert engine.session._model_path.endswith(package.ONNX_FP32)
    assert "no bench record" in caplog.text and "models bench" in caplog.text


def test_models_bench_records_the_fastest_passing_variant_and_auto_serves_it(
    registry, synthetic_dir, monkeypatch, capsys
):
    models, pkg = registry
    monkeypatch.setenv("DINOSERVE_MODELS_DIR", str(models))
    monkeypatch.setenv("DINOSERVE_INFERENCE__INTRA_OP_THREADS", "1")
    monkeypatch.setenv("DINOSERVE_SERVE__MAX_BATCH", "4")
    args = ["models", "bench", "micro", "--images", str(synthetic_dir), "--seconds", "0.2"]
    assert main([*args, "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "guard images: " in out and "labelled" in out and "chosen: " in out
    record = read_record(pkg)
    assert record is not None and record.batches == [1, 4] and record.version == pkg.name
    timed = {(c.engine, c.variant) for c in record.candidates}
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= timed
    int8 = next(c for c in record.candidates if c.variant == "int8" and c.engine == "onnxruntime")
    assert int8.guard["knn_queries"] > 0 and set(int8.images_per_s) == {1, 4}
    passing = [c for c in record.candidates if c.passed]
    assert record.chosen.score == max(c.score for c in passing)
    engine, variant = resolve_auto(pkg, package.read_meta(pkg))
    assert (engine, variant) == (record.chosen.engine, record.chosen.variant)
    served = load_engine(pkg, "auto", InferenceSettings(intra_op_threads=1))
    assert (
        type(served).__name__ == {"onnxruntime": "OrtEngine", "openvino": "OpenVinoEngine"}[engine]
    )


def _record(pkg, **chosen):
    base = {"engine": "onnxruntime", "variant": "fp32", "images_per_s": {"1": 10.0}}
    return {
        "model": "micro",
        "version": pkg.name,
        "date": "2026-12-04",
        "cpu": "x",
        "cores": 2,
        "threads": 1,
        "batches": [1],
        "candidates": [base],
        "chosen": {**base, **chosen},
    }


def test_a_record_naming_what_cannot_be_served_stops_the_start(registry, monkeypatch, capsys):
    models, pkg = registry
    meta = package.read_meta(pkg)
    path = record_path(pkg)
    path.write_text(json.dumps(_record(pkg, variant="int8-static")))
    with pytest.raises(ChoiceError, match="no int8-static ONNX model"):
        resolve_auto(pkg, meta)
    # dinoserve serve validates it before binding the port
    monkeypatch.setenv("DINOSERVE_MODELS_DIR", str(models))
    monkeypatch.setenv("DINOSERVE_MODEL", "micro")
    monkeypatch.setenv("DINOSERVE_ENGINE", "auto")
    assert main(["serve", "--port", "1"]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out and "int8-static" in err
    path.write_text("{not json")
    with pytest.raises(ChoiceError, match="not a bench record"):
        resolve_auto(pkg, meta)
    path.write_text(json.dumps(_record(pkg) | {"version": "20200101-000000-old"}))
    with pytest.raises(ChoiceError, match="not " + pkg.name):
        resolve_auto(pkg, meta)
