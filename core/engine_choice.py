"""Which engine serves a package, and loading it (`load_engine`): DINOSERVE_ENGINE names one,
or `auto` serves the record `dinoserve models bench` wrote beside the registry's versions,
`<models_dir>/<name>/bench-<version>.json`.

The record is kept outside the package (a package is immutable, and its speed is a property of
the machine, not of the model). It lists every (engine, variant) timed, with its images/s per
batch size and its accuracy guard, and names the fastest that passed. Without a record, auto
serves onnxruntime fp32 and says so in the log; a record that names something this machine or
package cannot serve stops the start (`resolve_auto`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from core import package
from core.engines import Engine, OrtEngine
from core.extras import EngineUnavailable, require_openvino
from core.settings import InferenceSettings
from core.torch_engine import TorchEngine  # torch itself is imported when one is built

log = logging.getLogger(__name__)
FALLBACK = ("onnxruntime", "fp32")


class ChoiceError(package.PackageError):
    """A bench record is malformed or names an engine or variant that cannot be served."""


class Candidate(BaseModel):
    """One timed (engine, variant): images/s per batch size and its accuracy guard."""

    engine: str
    variant: str
    images_per_s: dict[int, float]
    guard: dict[str, Any] = {}  # evaluation.variant_guard.GuardResult; {} for the reference
    passed: bool = True
    score: float = 0.0  # geometric mean of images_per_s over the batch sizes


class BenchRecord(BaseModel):
    """bench-<version>.json."""

    model: str
    version: str
    date: str
    cpu: str
    cores: int
    threads: int
    batches: list[int]
    candidates: list[Candidate]
    chosen: Candidate


def record_path(package_dir: Path) -> Path:
    """Where the bench record of a package lives: beside its version folder."""
    package_dir = Path(package_dir)
    return package_dir.parent / f"bench-{package_dir.name}.json"


def write_record(package_dir: Path, record: BenchRecord) -> Path:
    """Write the record atomically (temporary file + os.replace); returns its path."""
    path = record_path(package_dir)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_record(package_dir: Path) -> BenchRecord | None:
    """The package's bench record, None when there is none.

    Raises:
        ChoiceError: the file is there but is not a record of this version.
    """
    path = record_path(package_dir)
    if not path.is_file():
        return None
    try:
        record = BenchRecord.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ChoiceError(
            f"{path}: not a bench record ({exc.error_count()} errors): run "
            "`dinoserve models bench` again or delete it"
        ) from exc
    if record.version != Path(package_dir).name:
        raise ChoiceError(f"{path} is the record of {record.version}, not {package_dir.name}")
    return record


def resolve_auto(package_dir: Path, meta: package.PackageMeta) -> tuple[str, str]:
    """(engine, variant) for DINOSERVE_ENGINE=auto: the record's choice, else onnxruntime fp32.

    Raises:
        ChoiceError: the record names a variant the package lacks, or an engine whose runtime
            is not installed here.
    """
    record = read_record(package_dir)
    if record is None:
        log.info(
            "DINOSERVE_ENGINE=auto: no bench record for %s (%s), serving onnxruntime fp32; "
            "`dinoserve models bench` measures and records the fastest variant",
            meta.version,
            record_path(package_dir),
        )
        return FALLBACK
    engine, variant = record.chosen.engine, record.chosen.variant
    where = record_path(package_dir)
    if engine not in ("onnxruntime", "openvino", "torch"):
        raise ChoiceError(f"{where} chose an unknown engine {engine!r}")
    if engine != "torch":
        try:
            package.require_variant(package_dir, meta, variant, engine)
        except package.PackageError as exc:
            raise ChoiceError(f"{where}: {exc}") from exc
    if engine == "openvino":
        try:
            require_openvino()
        except EngineUnavailable as exc:
            raise ChoiceError(f"{where} chose openvino: {exc}") from exc
    log.info(
        "DINOSERVE_ENGINE=auto: %s %s (%.1f img/s at batch %s, measured %s on %s)",
        engine,
        variant,
        record.chosen.images_per_s.get(max(record.batches), 0.0),
        max(record.batches),
        record.date,
        record.cpu,
    )
    return engine, variant


def resolve_engine(
    package_dir: Path, kind: str, settings: InferenceSettings | None = None
) -> tuple[str, InferenceSettings]:
    """The engine kind and settings that `kind` means for this package: "auto" becomes the
    choice `dinoserve models bench` recorded (`resolve_auto`), with its variant."""
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
