"""The README's "First steps after the demo", run as a script on the state `make demo` leaves:
every command it shows runs as shown.

The demo state is built small (a random-init tiny model packaged as `demo-tiny`, a few
synthetic images per class with their masks, indexed with labels) in a temporary folder that
looks like a checkout after `make demo`; `.venv/bin/dinoserve` there runs this tree's CLI. The
one change to the commands: the service's port, `localhost:8000` → a free port (set as
DINOSERVE_SERVE__PORT), since 8000 may be taken where the tests run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_browser import _free_port
from tests.conftest import ROOT

SECTION = "## First steps after the demo"


def readme_commands() -> list[str]:
    """The command lines of the section's bash blocks, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def json_objects(text: str) -> list[dict]:
    """The JSON objects in `text`, in order (curl prints no newline after an answer, so they
    share lines with the service's log)."""
    decoder, found, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            end = i + 1
        else:
            found.append(obj)
        i = text.find("{", end)
    return found


@pytest.fixture
def demo_checkout(tiny_package, tmp_path) -> Path:
    """A folder as `make demo` leaves it: var/models/demo-tiny (CURRENT), var/data/synthetic
    indexed into `images` with labels, var/data/synthetic-queries with its masks beside it, and
    .venv/bin/dinoserve."""
    import shutil

    from core import package
    from core.settings import Settings
    from indexer.run import IndexRequest, index_source
    from training.synthetic import make_synthetic

    root = tmp_path / "checkout"
    name_dir = root / "var" / "models" / "demo-tiny"
    name_dir.mkdir(parents=True)
    shutil.copytree(tiny_package, name_dir / tiny_package.name)
    package.switch_current(name_dir, tiny_package.name)
    data = make_synthetic(root / "var" / "data" / "synthetic", 3, 32, seed=0, masks=True)
    make_synthetic(root / "var" / "data" / "synthetic-queries", 2, 32, seed=12345, masks=True)
    settings = Settings(
        models_dir=root / "var" / "models",
        qdrant_path=root / "var" / "qdrant",
        index_dir=root / "var" / "index",
        inference={"intra_op_threads": 1, "inter_op_threads": 1},
    )
    assert settings.model == "demo-tiny"  # what every command below resolves to
    index_source(settings, IndexRequest(str(data), labels="dirs"), progress=False)
    cli = root / ".venv" / "bin" / "dinoserve"
    cli.parent.mkdir(parents=True)
    cli.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m dinoserve "$@"\n')
    cli.chmod(0o755)
    return root


@pytest.mark.slow
def test_first_steps_run_as_shown(demo_checkout):
    commands = readme_commands()
    assert any(c.startswith("curl") for c in commands) and len(commands) > 10
    port = _free_port()
    script = "\n".join(["set -euo pipefail", *commands]).replace(
        "localhost:8000", f"localhost:{port}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOSERVE_")}
    env.update(
        DINOSERVE_SERVE__PORT=str(port),
        DINOSERVE_INFERENCE__INTRA_OP_THREADS="1",
        DINOSERVE_INFERENCE__INTER_OP_THREADS="1",
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=demo_checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])
    # Every JSON answer of the service is a success: no error shape anywhere.
    answers = json_objects(out)
    evals = [a for a in answers if "model_version" in a and ("top1" in a or "per_head" in a)]
    assert len(evals) == sum(" eval " in c for c in commands) == 2
    assert 0 <= evals[0]["top1"] <= 100 and 0 <= evals[1]["mean"] <= 1
    answers = [a for a in answers if a not in evals]
    assert len(answers) == sum(c.startswith("curl") for c in commands)
    assert not [a for a in answers if "error" in a], answers
    assert sum("label" in a for a in answers) == 2  # both classify calls, the second with a key
    searches = [a for a in answers if "results" in a]
    assert len(searches) == 3 and all(a["results"] for a in searches)
    # The relative and the absolute path name the same indexed image.
    assert [r["id"] for r in searches[1]["results"]] == [r["id"] for r in searches[2]["results"]]
    assert "deleted collection 'mine'" in out
    assert "models list" not in done.stderr  # no command failed quietly
