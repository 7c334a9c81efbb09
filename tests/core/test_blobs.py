"""The blob store of uploaded images and `blob://` URIs."""

from __future__ import annotations

import hashlib

import pytest

from core.blobs import Blobs, blob_uri, is_blob, sha_of
from core.uris import reader


@pytest.mark.parametrize("fsync", [True, False])
def test_content_addressed_and_written_once(tmp_path, fsync):
    blobs = Blobs(tmp_path / "b", fsync)
    sha = blobs.put(b"abc")
    assert sha == hashlib.sha256(b"abc").hexdigest()
    assert blobs.path(sha) == tmp_path / "b" / sha[:2] / sha
    assert blobs.read(sha) == b"abc" and blobs.put(b"abc") == sha
    assert [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()] == [sha]  # no temp left


def test_hide_restore_and_remove(tmp_path):
    blobs = Blobs(tmp_path)
    sha = blobs.put(b"x")
    hidden = blobs.hide(sha)
    assert hidden is not None and not blobs.exists(sha)
    blobs.restore(sha, hidden)
    assert blobs.read(sha) == b"x"
    blobs.hide(sha).unlink()
    assert blobs.hide(sha) is None and not blobs.exists(sha)


def test_blob_uris_read_back_and_never_leave_the_directory(tmp_path):
    blobs = Blobs(tmp_path / "b")
    uri = blob_uri(blobs.put(b"image bytes"))
    assert is_blob(uri) and reader(uri, tmp_path / "b")() == b"image bytes"
    with pytest.raises(OSError, match="no blob directory"):
        reader(uri)()
    for bad in ("blob://../../etc/passwd", "blob://" + "A" * 64, "blob://abc", "blob:///x"):
        with pytest.raises(OSError):
            reader(bad, tmp_path / "b")()
        with pytest.raises(OSError):
            sha_of(bad)
    with pytest.raises(OSError):  # a well-formed URI whose bytes are gone
        reader(blob_uri("0" * 64), tmp_path / "b")()
    with pytest.raises(ValueError):
        blobs.path("../x")


def test_release_and_sweep_keep_every_blob_a_point_names(tmp_path):
    import numpy as np

    from core.blobs import release, sweep
    from core.store import point_id
    from tests.stores import edge_store

    db = edge_store(tmp_path / "q")
    blobs = Blobs(tmp_path / "b")
    try:
        a, b, c = (blobs.put(x) for x in (b"a", b"b", b"c"))
        for name, version, sha in (("one", "v1", a), ("one", "v2", b), ("two", "v1", b)):
            physical = db.ensure_collection(name, version, 4)
            db.upsert(physical, [point_id(sha)], np.ones((1, 4)), [{"uri": blob_uri(sha)}])
        assert not release(db, blobs, blob_uri(b)) and blobs.exists(b)  # two points name it
        assert sweep(db, blobs) == 1 and not blobs.exists(c)  # c: no point
        db.delete_collections(["one__v2"])
        assert sweep(db, blobs) == 0 and blobs.exists(b)  # two__v1 still names b
        db.delete_collections(["two__v1"])
        assert sweep(db, blobs) == 1 and not blobs.exists(b) and blobs.exists(a)
    finally:
        db.close()
