"""The optional `openvino` extra (`pip install '.[openvino]'`: openvino and nncf): the one install
check, for the engine that runs its variants (core/openvino_engine.py) and for the export that
writes NNCF's (training/nncf_int8.py). Its absence is one clear error."""

from __future__ import annotations

from types import ModuleType

INSTALL = "pip install '.[openvino]' (or pip install openvino nncf)"


class EngineUnavailable(ValueError):
    """The engine asked for cannot run here (its optional runtime is not installed)."""


def require_openvino() -> ModuleType:
    """The `openvino` module, or EngineUnavailable saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise EngineUnavailable(f"the openvino engine needs the openvino extra: {INSTALL}") from exc
    return openvino


def missing(what: str) -> EngineUnavailable:
    """The error for another missing piece of the extra (e.g. nncf)."""
    return EngineUnavailable(f"{what} is not installed: {INSTALL}")
