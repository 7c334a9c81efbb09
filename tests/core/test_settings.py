"""Settings a newcomer gets wrong: misspelt variables stop the start; the default model is the
one the registry holds when the shipped default is absent."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core import package
from core.settings import Settings, variable_names
from tests.core.test_package import _write


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("DINOSERVE_API_KEYS", "DINOSERVE_API_KEY"),
        ("DINOSERVE_MODLE", "DINOSERVE_MODEL"),
        ("DINOSERVE_SERVE__PORTT", "DINOSERVE_SERVE__PORT"),
        ("dinoserve_inference__onnx_varient", "DINOSERVE_INFERENCE__ONNX_VARIANT"),
    ],
)
def test_unknown_variable_stops_with_the_nearest_name(monkeypatch, variable, nearest):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(
        ValidationError, match=f"{variable} is not a setting; did you mean {nearest}"
    ):
        Settings()


def test_every_documented_variable_is_accepted(monkeypatch):
    assert "DINOSERVE_SERVE__KEEP_ALIVE_S" in variable_names()
    monkeypatch.setenv("DINOSERVE_API_KEY", "k")
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", "8001")
    s = Settings()
    assert s.api_key == "k" and s.serve.port == 8001


def test_default_model_falls_back_to_the_latest_activated_package(tmp_path, monkeypatch):
    monkeypatch.delenv("DINOSERVE_MODEL", raising=False)
    assert Settings(models_dir=tmp_path).model == "dino-vits16"  # empty registry: the default
    _write(tmp_path, "demo-tiny")
    assert Settings(models_dir=tmp_path).model == "demo-tiny"
    # An explicit name is never replaced: a typo must fail, not serve something else.
    assert Settings(models_dir=tmp_path, model="typo").model == "typo"
    monkeypatch.setenv("DINOSERVE_MODEL", "typo")
    assert Settings(models_dir=tmp_path).model == "typo"


def test_unknown_model_error_lists_the_models_there(tmp_path):
    _write(tmp_path, "demo-tiny")
    with pytest.raises(package.PackageError, match=r"models there: demo-tiny.*DINOSERVE_MODEL"):
        package.resolve(tmp_path, "dino-vits16")
