"""The model package: `<models_dir>/<name>/<version>/` (immutable) with model.onnx,
backbone.safetensors and model.json, plus `<name>/CURRENT` naming the live version.

A package is built in a hidden staging folder and renamed into place in one step, so readers see
either no version or a complete one; CURRENT is switched by writing a temporary file and
`os.replace`, so a reader never sees a half-written name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
META = "model.json"
CURRENT = "CURRENT"
ONNX_FP32, ONNX_INT8, WEIGHTS = "model.onnx", "model.int8.onnx", "backbone.safetensors"
ONNX_INT8_STATIC = "model.int8s.onnx"  # static int8, QDQ (training/static_int8.py)
OV_INT8_NNCF = "model.nncf.xml"  # NNCF's int8 as OpenVINO IR, weights in model.nncf.bin
QUANTIZED = ("int8", "int8-static", "int8-nncf")  # the variants an export can add beside fp32


class PackageError(ValueError):
    """A package or model name is missing, malformed or of an unknown schema."""


class IntegrityError(PackageError):
    """A package file is missing or its sha256 differs from model.json."""


class OnnxVariant(BaseModel):
    """One model file of the package: fp32 or a quantised variant with its guard's figures."""

    file: str
    format: Literal["onnx", "openvino"] = "onnx"  # openvino: an IR .xml with its .bin beside
    min_cosine: float | None = None  # vs fp32 on the export's check images (quantised only)
    guard: dict[str, Any] = {}  # evaluation.variant_guard.GuardResult at export
    float_nodes: list[str] = []  # nodes a static quantisation left in float, on purpose


class EmbedViews(BaseModel):
    """The views of an image whose embeddings are averaged into the served one.

    The image itself; with `shift` > 0 also the image moved by ± `shift` pixels along each axis
    (the input tensor, edges replicated: 4 more views); with `flip` each of those mirrored left
    to right as well. The served embedding is then the mean of the views' unit CLS embeddings:
    invariant to a mirror by construction and steadier under small moves, for `count` times the
    compute. A backbone's own CLS can be far from that: the shipped demo backbone's cosine
    between an image and its mirror is 0.29 (bench/RESULTS.md). The views are part of the
    package (and its ONNX graph), so every embedding of a collection is made the same way. The
    default, the image alone, serves the raw CLS feature.

    The attention map is the mean of the views' maps, each mirrored and moved back onto the
    image. Where `shift` divides the patch (and is smaller), the moved views' patches straddle
    the image's: their maps land half a patch (or less) off its grid, so the mean is a map on a
    grid of `shift`-pixel cells (shift and stitch, Long et al. 2015: a finer map for no extra
    forward). Otherwise moves would only blur whole patches, and only the mirror is averaged in.

    With `smooth` > 0 the map is then smoothed by a Gaussian of σ = `smooth` cells (truncated
    at 2σ, edges replicated) on its own grid, and normalised again. A token's attention stands
    for its whole patch and the stitched cells hold means of overlapping patches, so the raw
    map has blocky steps at an object's outline; the smoothed map's 60 % mask follows the
    outline more closely (the demo backbone: Jaccard 0.617 → 0.677 at 64 px, 0.680 → 0.733 at
    96 px; bench/RESULTS.md). It changes the map only, never the embedding, and the mask is
    still the cells holding `threshold`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    flip: bool = False
    shift: int = Field(0, ge=0)  # pixels of the model's input
    smooth: float = Field(0.0, ge=0, le=4)  # σ of the map's Gaussian smoothing, in map cells

    @property
    def count(self) -> int:
        return (5 if self.shift else 1) * (2 if self.flip else 1)

    def offsets(self) -> list[tuple[int, int, bool]]:
        """(dy, dx, mirrored) of each view, in batch order (core.vit.view_batch): view pixel
        (y, x) shows image pixel (y + dy, x + dx), after the mirror where mirrored. The image
        itself comes first."""
        s = self.shift
        moves = [(0, 0)] + ([(0, -s), (0, s), (-s, 0), (s, 0)] if s else [])
        return [(dy, dx, m) for m in ((False, True) if self.flip else (False,)) for dy, dx in moves]

    def map_cell(self, patch: int) -> int:
        """Pixels per side of a cell of the attention map, for a backbone of patch `patch`."""
        return self.shift if 0 < self.shift < patch and patch % self.shift == 0 else patch


class PackageMeta(BaseModel):
    """model.json. `files` maps every other file of the package to its sha256."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str = ""
    created_at: str = ""
    arch: str
    timm_kwargs: dict[str, Any]
    img_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    embed_dim: int
    num_heads: int
    grid: tuple[int, int]  # of the attention map: the patch grid, finer with stitched views
    views: EmbedViews = EmbedViews()  # test-time views averaged into the embedding
    onnx: dict[str, OnnxVariant]  # "fp32", optionally those of QUANTIZED
    parity: dict[str, float] = {}  # max abs differences ORT vs torch measured at export
    provenance: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    files: dict[str, str] = {}

    @property
    def map_cell(self) -> int:
        """Pixels per side of a cell of the attention map (the patch, unless views stitch a
        finer map; read from `grid`, so a package says what its graph makes)."""
        return self.patch_size * (self.img_size // self.patch_size) // self.grid[1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def staging_dir(models_dir: Path, name: str) -> Path:
    """A fresh hidden folder beside the versions of `name`, to write a package's files into."""
    if not name or "/" in name or name.startswith("."):
        raise PackageError(f"invalid model name: {name!r}")
    stage = Path(models_dir) / name / f".staging-{os.getpid()}-{time.time_ns()}"
    stage.mkdir(parents=True)
    return stage


def finalize(stage: Path, meta: PackageMeta) -> Path:
    """Hash the staged files, write model.json and rename the folder to its version.

    The version is `YYYYMMDD-HHMMSS-<hash of the file hashes>` (UTC), so versions sort by time.
    Returns the package directory.
    """
    files = {p.name: sha256(p) for p in sorted(stage.iterdir()) if p.name != META}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
    now = time.gmtime()
    meta = meta.model_copy(
        update={
            "files": files,
            "version": f"{time.strftime('%Y%m%d-%H%M%S', now)}-{digest}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
        }
    )
    (stage / META).write_text(meta.model_dump_json(indent=2) + "\n")
    final = stage.parent / meta.version
    if final.exists():  # same content within the same second: keep the one already there
        shutil.rmtree(stage)
        return final
    os.replace(stage, final)
    for p in final.iterdir():
        p.chmod(0o444)  # immutable once written
    return final


def read_meta(package_dir: Path) -> PackageMeta:
    """Parse model.json of a package (no hashing; see `verify`)."""
    path = Path(package_dir) / META
    if not path.is_file():
        raise PackageError(f"not a model package (no {META}): {package_dir}")
    try:
        meta = PackageMeta.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise PackageError(f"{path}: invalid {META}: {exc}") from exc
    if meta.schema_version != SCHEMA_VERSION:
        raise PackageError(f"{path}: schema {meta.schema_version}, expected {SCHEMA_VERSION}")
    return meta


def verify(package_dir: Path) -> PackageMeta:
    """Read model.json and check every listed file's sha256; raise IntegrityError otherwise."""
    meta = read_meta(package_dir)
    for name, expected in meta.files.items():
        path = Path(package_dir) / name
        if not path.is_file():
            raise IntegrityError(f"{package_dir}: missing {name}")
        if sha256(path) != expected:
            raise IntegrityError(f"{package_dir}: {name} does not match its sha256")
    return meta


def list_versions(name_dir: Path) -> list[str]:
    """Complete versions of one model, oldest first."""
    if not Path(name_dir).is_dir():
        return []
    return sorted(
        p.name for p in Path(name_dir).iterdir() if not p.name.startswith(".") and p.is_dir()
    )


def switch_current(name_dir: Path, version: str) -> None:
    """Point `<name>/CURRENT` at `version` atomically (temporary file + fsync + os.replace)."""
    if not (Path(name_dir) / version / META).is_file():
        raise PackageError(f"no such version: {name_dir}/{version}")
    tmp = Path(name_dir) / f".{CURRENT}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, Path(name_dir) / CURRENT)
    finally:
        tmp.unlink(missing_ok=True)


def current_version(name_dir: Path) -> str:
    path = Path(name_dir) / CURRENT
    if not path.is_file():
        raise PackageError(f"no {CURRENT} in {name_dir}")
    return path.read_text().strip()


def require_variant(
    package_dir: Path, meta: PackageMeta, variant: str, engine: str = "onnxruntime"
) -> None:
    """Raise PackageError, saying how to fix it, when the package has no `variant` model file
    or `engine` cannot read it (an OpenVINO IR is for the openvino engine only)."""
    if variant not in meta.onnx:
        raise PackageError(
            f"{package_dir} has no {variant} ONNX model (it has: {', '.join(meta.onnx)}): "
            f"export one with `dinoserve export RUN_DIR --quantize {variant}` (or import "
            f"… --quantize {variant}), or unset DINOSERVE_INFERENCE__ONNX_VARIANT"
        )
    if meta.onnx[variant].format == "openvino" and engine != "openvino":
        raise PackageError(
            f"{package_dir}: the {variant} model is OpenVINO IR, which the {engine} engine "
            "cannot run: set DINOSERVE_ENGINE=openvino (or auto), or choose another variant"
        )


def install(package_dir: Path, models_dir: Path, name: str, activate: bool = True) -> Path:
    """Copy a verified package into the registry as a version of `name`, keeping its version.

    A version already there is kept as it is (versions are immutable). With `activate`, CURRENT
    points at it. Returns the installed package directory.

    Raises:
        PackageError: the source is no package or fails its sha256 check.
    """
    meta = verify(package_dir)
    final = Path(models_dir) / name / meta.version
    if not (final / META).is_file():
        stage = staging_dir(models_dir, name)
        for f in [*meta.files, META]:
            shutil.copyfile(Path(package_dir) / f, stage / f)
        os.replace(stage, final)
        for p in final.iterdir():
            p.chmod(0o444)
    if activate:
        switch_current(final.parent, meta.version)
    return final


def known_models(models_dir: Path) -> list[str]:
    """Names under `models_dir` with an active version (a CURRENT), most recently activated
    first."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    active = [p for p in root.iterdir() if not p.name.startswith(".") and (p / CURRENT).is_file()]
    return [
        p.name for p in sorted(active, key=lambda p: (p / CURRENT).stat().st_mtime_ns, reverse=True)
    ]


def resolve(models_dir: Path, model: str) -> Path:
    """A package directory from a model name (its CURRENT version) or a package path.

    A name with versions but no CURRENT (imported without `--activate`, never refreshed to)
    resolves to its newest version: asking for it by name is the choice.

    Args:
        models_dir: the registry, e.g. var/models.
        model: a name under models_dir, or a path to a package directory.
    """
    if (Path(model) / META).is_file():
        return Path(model)
    name_dir = Path(models_dir) / model
    if not name_dir.is_dir():
        known = known_models(models_dir)
        there = f"models there: {', '.join(known)}" if known else f"{models_dir} holds none yet"
        raise PackageError(
            f"unknown model {model!r} (not in {models_dir}, not a package path); {there}. "
            "Set DINOSERVE_MODEL to one of them, or make one (make demo, dinoserve export)"
        )
    if not (name_dir / CURRENT).is_file() and (versions := list_versions(name_dir)):
        return name_dir / versions[-1]
    return name_dir / current_version(name_dir)
