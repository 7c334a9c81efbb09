"""The import contracts (pyproject.toml's [tool.importlinter], checked by import-linter): layers
point down, no cycle anywhere, no HTTP, scikit-learn or scipy in the kernel, no HTTP or event
loop in the features. The check is also shown failing on a copy of the code with bad imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["dinoserve", "api", "refresh", "discovery", "training", "evaluation", "indexer", "core"]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the checkout at `root` (its packages first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contracts_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].split(",")[0]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The product packages and the contracts, copied."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_an_upward_import_breaks_the_layers(copy: Path) -> None:
    _append(copy / "core" / "knn.py", "\n\ndef _late():\n    import api.main  # noqa\n")
    out = lint(copy)
    assert out.returncode != 0
    assert "layers point down: CLI, service, features, kernel BROKEN" in out.stdout
    assert "core.knn -> api.main" in out.stdout


def test_a_type_only_cycle_is_a_cycle(copy: Path) -> None:
    _append(
        copy / "core" / "knn.py",
        "\n\nfrom typing import TYPE_CHECKING\n\n"
        "if TYPE_CHECKING:\n    import core.engines  # noqa\n",
    )
    _append(copy / "core" / "engines.py", "\n\ndef _late():\n    import core.knn  # noqa\n")
    out = lint(copy)
    assert out.returncode != 0
    assert "no import cycle in any package BROKEN" in out.stdout


def test_scipy_in_the_kernel_and_asyncio_in_a_feature(copy: Path) -> None:
    _append(copy / "core" / "knn.py", "\n\nimport scipy  # noqa\n")
    _append(copy / "indexer" / "sources.py", "\n\nimport asyncio  # noqa\n")
    out = lint(copy)
    assert "the kernel knows no HTTP, scikit-learn or scipy BROKEN" in out.stdout
    assert "features know no HTTP and no event loop BROKEN" in out.stdout
