"""refresh.job as a library: one job's run, its switch hook, abort, rollback and describe,
without a service or a CLI around it."""

from __future__ import annotations

import pytest

from core.package import current_version
from refresh import job as refresh_job
from refresh.job import Prepared, RefreshJob, RefreshStatus
from tests.stores import edge_store


@pytest.fixture
def q(env):
    client = edge_store(env.qdrant_path)
    yield client
    client.close()


def _job(env, q) -> RefreshJob:
    status = RefreshStatus.begin("test", env.v1, env.v2)
    return RefreshJob(q, env.settings(), env.name_dir, status)


def test_a_failing_switch_aborts_and_changes_nothing(env, q):
    before = q.aliases()
    seen: list[Prepared] = []

    def switch(job: RefreshJob, p: Prepared) -> None:
        seen.append(p)
        raise OSError("flip refused (injected)")

    st = _job(env, q).run(switch)
    assert st.state == "failed" and "flip refused (injected)" in str(st.error)
    assert seen[0].targets == {"more": f"more__{env.v2}", "shapes": f"shapes__{env.v2}"}
    assert st.collections["shapes"]["written"] == 60  # re-embedded before the switch failed
    assert not q.exists(f"shapes__{env.v2}") and not q.exists(f"more__{env.v2}")  # dropped
    assert q.aliases() == before and current_version(env.name_dir) == env.v1


def test_run_commits_then_rollback_goes_back(env, q):
    st = _job(env, q).run()
    assert (st.state, st.phase) == ("done", "switching")
    assert q.resolve_alias("shapes") == f"shapes__{env.v2}"
    assert current_version(env.name_dir) == env.v2

    back = RefreshJob.rollback(q, env.settings(), env.name_dir, env.v2)
    assert back.status.to_version == env.v1
    p = back.prepare_rollback()
    back.commit(p)
    assert q.resolve_alias("shapes") == f"shapes__{env.v1}"
    assert current_version(env.name_dir) == env.v1

    info = refresh_job.describe(q, env.name_dir, env.v1)
    rows = {r["version"]: r for r in info["versions"]}
    assert rows[env.v1]["current"] and rows[env.v1]["served"]
    assert rows[env.v2]["collections"][f"shapes__{env.v2}"] == {"points": 60, "alias": None}
    assert refresh_job.describe(None, env.name_dir, env.v1)["versions"][0]["collections"] is None
