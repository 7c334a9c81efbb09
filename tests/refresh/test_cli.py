"""`dinoserve refresh` and `dinoserve models list|rollback|gc`: in-process with no service, and
through a running service's admin API."""

from __future__ import annotations

import os
import shutil

from core.package import current_version, switch_current
from dinoserve.cli import main
from tests.refresh.conftest import ADMIN_KEY
from tests.stores import edge_store

OLD = "19990101-000000-old"


def _aliases(env) -> dict[str, str]:
    client = edge_store(env.qdrant_path)
    try:
        return client.aliases()
    finally:
        client.close()


def test_without_a_service(cli_env, capsys):
    env = cli_env
    shutil.copytree(env.name_dir / env.v1, env.name_dir / OLD)  # an older version for gc
    client = edge_store(env.qdrant_path)
    client.ensure_collection("gone", OLD, 32)
    client.close()

    assert main(["refresh"]) == 0
    assert f"serving {env.v2} (was {env.v1})" in capsys.readouterr().out
    assert current_version(env.name_dir) == env.v2
    assert _aliases(env)["shapes"] == f"shapes__{env.v2}"
    assert _aliases(env)["more"] == f"more__{env.v2}"

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    # no service answers: CURRENT is marked, nothing is "served"
    assert f"*  {env.v2}  more__{env.v2} 20 pts ← more, shapes__{env.v2} 60 pts ← shapes" in out
    assert "served: no service answers at" in out and f"model {env.name_dir.name}" in out
    assert f"   {env.v1}  more__{env.v1} 20 pts, shapes__{env.v1} 60 pts" in out

    assert main(["models", "gc"]) == 0  # keeps v2 (served) and v1 (previous)
    assert f"deleted versions: ['{OLD}']; collections: ['gone__{OLD}']" in capsys.readouterr().out
    assert not (env.name_dir / OLD).exists()
    assert _aliases(env)["stale"] == f"stale__{OLD}"  # aliased: never dropped

    assert main(["models", "rollback"]) == 0
    assert f"rolled back {env.v2} → {env.v1}" in capsys.readouterr().out
    assert current_version(env.name_dir) == env.v1
    assert _aliases(env)["shapes"] == f"shapes__{env.v1}"
    assert main(["models", "rollback"]) == 2  # nothing older left
    assert "no version of micro older than" in capsys.readouterr().err


def test_through_the_service(cli_env, start_server, monkeypatch, capsys):
    env = cli_env
    base = start_server(env.settings(admin_api_key=ADMIN_KEY))
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", base.rsplit(":", 1)[1])
    assert main(["refresh"]) == 2  # the service wants the admin key
    err = capsys.readouterr().err
    assert "401" in err and f"the service at {base} needs its admin key" in err
    assert "set DINOSERVE_ADMIN_API_KEY" in err and "Bearer" not in err
    # another model, activated after the service started: listed, CURRENT, but not served
    other = env.models_dir / "other"
    shutil.copytree(env.name_dir / env.v1, other / OLD)
    switch_current(other, OLD)
    assert main(["models", "list"]) == 0  # reading needs no key (collections left out)
    out = capsys.readouterr().out
    assert f"(* CURRENT, > served by {base})" in out
    assert f"model micro\n*> {env.v1}" in out and f"model other\n*  {OLD}" in out
    monkeypatch.setenv("DINOSERVE_ADMIN_API_KEY", ADMIN_KEY)

    assert main(["refresh", "--poll-s", "0.1"]) == 0
    out = capsys.readouterr().out
    assert f"service {base}: refresh {env.v1} → {env.v2}" in out
    assert f"serving {env.v2}" in out and current_version(env.name_dir) == env.v2
    assert main(["models", "list"]) == 0
    assert f"*> {env.v2}" in capsys.readouterr().out
    assert main(["models", "rollback"]) == 0
    assert current_version(env.name_dir) == env.v1


def test_export_without_activating(cli_env, micro_run, capsys):
    env = cli_env
    assert (
        main(["export", str(micro_run), "--no-activate", "--models-dir", str(env.models_dir)]) == 0
    )
    assert f"(CURRENT → {env.v1})" in capsys.readouterr().out  # --name: DINOSERVE_MODEL
    assert current_version(env.name_dir) == env.v1
    assert len([p for p in env.name_dir.iterdir() if p.is_dir()]) == 3


def test_a_held_store_without_a_service_names_the_address_tried(cli_env, monkeypatch, capsys):
    env = cli_env
    holder = edge_store(env.qdrant_path)  # a service on another address
    try:
        assert main(["models", "rollback"]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    port = os.environ["DINOSERVE_SERVE__PORT"]
    assert f"no service answers at http://127.0.0.1:{port}" in err
    assert "DINOSERVE_SERVE__HOST and DINOSERVE_SERVE__PORT" in err
