"""Which model versions a refresh, a rollback and `models gc` act on (the registry's policy;
the store work they lead to is refresh.job's).

Versions sort by time (`YYYYMMDD-HHMMSS-<hash>`). The *served* version is what a running service
answers with, else the registry's CURRENT. Rollback goes to the newest version older than the
served one; gc keeps every version from the served one on (a rolled-back version may come back)
and the `keep - 1` older ones before it, so the served and the previous version are never lost.
"""

from __future__ import annotations

from pathlib import Path

from core import package


class VersionError(LookupError):
    """No version fits (nothing newer, nothing older, unknown version, pinned package path)."""


def registry_dir(models_dir: Path, model: str) -> Path:
    """`<models_dir>/<model>`: the folder of a model name's versions and its CURRENT.

    Raises:
        VersionError: `model` is a package path (one pinned version: nothing to switch).
    """
    if (Path(model) / package.META).is_file():
        raise VersionError(
            f"DINOSERVE_MODEL={model} is a package path, which pins one version; refresh and "
            "rollback need a model name from the registry (DINOSERVE_MODELS_DIR)"
        )
    name_dir = Path(models_dir) / model
    if not name_dir.is_dir():
        raise VersionError(f"no model {model!r} in {models_dir}")
    return name_dir


def current_or_none(name_dir: Path) -> str | None:
    """The version CURRENT names, or None when there is no CURRENT (nothing activated yet)."""
    try:
        return package.current_version(name_dir)
    except package.PackageError:
        return None


def refresh_target(name_dir: Path, served: str | None, version: str | None = None) -> str:
    """The version a refresh moves to: `version`, else the newest one that is not served.

    Raises:
        VersionError: an unknown version, or nothing but the served version.
    """
    versions = package.list_versions(name_dir)
    if version is not None:
        if version not in versions:
            raise VersionError(f"no version {version!r} of {name_dir.name}")
        return version
    others = [v for v in versions if v != served]
    if not others:
        raise VersionError(f"{name_dir.name} has no version other than the served {served}")
    return others[-1]


def previous(name_dir: Path, served: str) -> str:
    """The newest version older than `served` (rollback's target).

    Raises:
        VersionError: nothing older is kept.
    """
    older = [v for v in package.list_versions(name_dir) if v < served]
    if not older:
        raise VersionError(f"no version of {name_dir.name} older than {served} is kept")
    return older[-1]


def gc_candidates(name_dir: Path, served: str, keep: int) -> list[str]:
    """Versions `models gc` deletes: those older than the `keep - 1` predecessors of `served`.

    Args:
        keep: versions kept up to the served one, itself included (at least 2: the served one
            and the previous one always stay).
    """
    older = [v for v in package.list_versions(name_dir) if v < served]
    return older[: max(0, len(older) - (max(keep, 2) - 1))]
