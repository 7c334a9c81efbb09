"""`dinoserve serve` refuses settings that cannot work before it says "serving on …"."""

from __future__ import annotations

from dinoserve.cli import main
from tests.core.test_package import _write


def test_int8_variant_missing_fails_before_serving_with_the_fix(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "models", "fp32only")  # a package with model.onnx only
    monkeypatch.setenv("DINOSERVE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DINOSERVE_INFERENCE__ONNX_VARIANT", "int8")
    assert main(["serve", "--port", "1"]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert "has no int8 ONNX model" in err and "--quantize int8" in err


def test_misspelt_variable_stops_serve(monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_API_KEYS", "secret")
    assert main(["serve"]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert "DINOSERVE_API_KEYS is not a setting; did you mean DINOSERVE_API_KEY?" in err
