"""refresh.reembed and refresh.versions as a library: re-embed, resume, flip, version policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.images import decode_image
from core.package import current_version
from core.store import Store
from refresh import reembed, versions
from tests.api.conftest import engine_for
from tests.stores import edge_store


@pytest.fixture
def q(env):
    client = edge_store(env.qdrant_path)
    yield client
    client.close()


def _points(q: Store, name: str) -> dict[str, tuple[dict, list[float]]]:
    return {p.id: (p.payload, p.vector) for p in q.iter_points(name, vectors=True)}


def test_reembed_writes_every_point_with_the_new_model_and_resumes(env, q):
    v2 = engine_for(env.name_dir / env.v2)
    target = q.ensure_collection("shapes", env.v2, v2.dim)
    seen: list[int] = []

    def progress(r: reembed.ReembedReport) -> None:
        seen.append(r.done)

    source = f"shapes__{env.v1}"
    report = reembed.reembed(
        q, source, target, v2, max_pixels=40_000_000, batch=16, progress=progress
    )
    assert (report.total, report.written, report.failed) == (60, 60, 0)
    assert seen == [16, 32, 48, 60]
    old, new = _points(q, f"shapes__{env.v1}"), _points(q, target)
    assert old.keys() == new.keys()
    for pid, (payload, _) in new.items():
        before = old[pid][0]
        assert payload["model_version"] == env.v2 and before["model_version"] == env.v1
        for key in ("uri", "label", "sha256", "width", "height"):
            assert payload[key] == before[key]
    # The stored vectors are v2's embeddings of the source images.
    pid, (payload, vector) = next(iter(new.items()))
    img = decode_image(Path(payload["uri"]).read_bytes(), 40_000_000)
    expected = v2.embed(v2.preprocess(img)[None])[0]
    assert np.allclose(vector, expected, atol=1e-5)
    assert not np.allclose(vector, old[pid][1], atol=1e-2)  # the two models differ
    again = reembed.reembed(q, f"shapes__{env.v1}", target, v2, 40_000_000)
    assert (again.written, again.unchanged) == (0, 60)  # a retried refresh resumes


def test_unreadable_images_are_reported_and_left_out(env, q):
    gone = sorted(env.images.rglob("*.png"))[:2]
    for p in gone:
        p.unlink()
    v2 = engine_for(env.name_dir / env.v2)
    target = q.ensure_collection("shapes", env.v2, v2.dim)
    report = reembed.reembed(q, f"shapes__{env.v1}", target, v2, 40_000_000)
    assert (report.written, report.failed) == (58, 2)
    assert {f["uri"] for f in report.failures} == {str(p) for p in gone}
    assert {f["reason"] for f in report.failures} == {"unreadable"}


def test_flip_moves_every_alias_in_one_call(env, q):
    assert q.collections_of_version(env.v1) == {
        "shapes": f"shapes__{env.v1}",
        "more": f"more__{env.v1}",
    }  # `stale` belongs to another version
    for name in ("shapes", "more"):
        q.ensure_collection(name, env.v2, 32)
    calls = []
    real = q._change_aliases
    q._change_aliases = lambda changes: calls.append(changes) or real(changes)
    q.flip({"shapes": f"shapes__{env.v2}", "more": f"more__{env.v2}"})
    assert len(calls) == 1
    assert q.aliases() == {
        "shapes": f"shapes__{env.v2}",
        "more": f"more__{env.v2}",
        "stale": "stale__19990101-000000-old",
    }


def test_version_policy(env, tmp_path):
    d = env.name_dir
    assert versions.refresh_target(d, env.v1) == env.v2
    assert versions.refresh_target(d, env.v2) == env.v1  # after a rollback: back again
    with pytest.raises(versions.VersionError):
        versions.refresh_target(d, env.v1, "nope")
    assert versions.previous(d, env.v2) == env.v1
    with pytest.raises(versions.VersionError):
        versions.previous(d, env.v1)
    assert current_version(d) == env.v1  # the v2 export did not move CURRENT
    with pytest.raises(versions.VersionError, match="pins one version"):
        versions.registry_dir(env.models_dir, str(d / env.v1))
    fake = tmp_path / "fake"
    for v in ("a", "b", "c", "d", "e"):
        (fake / v).mkdir(parents=True)
    assert versions.gc_candidates(fake, "d", keep=2) == ["a", "b"]  # keeps c, d and newer e
    assert versions.gc_candidates(fake, "d", keep=3) == ["a"]
    assert versions.gc_candidates(fake, "b", keep=2) == []
