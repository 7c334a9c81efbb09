"""The blob store of uploaded images and `blob://` URIs."""

from __future__ import annotations

import hashlib

import pytest

from core.blob_usage import LEDGER
from core.blobs import Blobs, blob_uri, is_blob, sha_of
from core.uris import reader


@pytest.mark.parametrize("fsync", [True, False])
def test_content_addressed_and_written_once(tmp_path, fsync):
    blobs = Blobs(tmp_path / "b", fsync)
    sha = blobs.put(b"abc")
    assert sha == hashlib.sha256(b"abc").hexdigest()
    assert blobs.path(sha) == tmp_path / "b" / sha[:2] / sha
    assert blobs.read(sha) == b"abc" and blobs.put(b"abc") == sha
    files = [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert sorted(files) == [LEDGER, sha]  # no temp left
    assert blobs.usage.total() == 3  # written once, counted once


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


# --- the store's size (core.blob_usage) -------------------------------------------------------


def test_the_limit_refuses_a_whole_batch_and_keeps_what_is_stored(tmp_path):
    from core.blobs import BlobStoreFull

    blobs = Blobs(tmp_path / "b", max_bytes=10)
    a = blobs.put(b"aaaa")
    with pytest.raises(BlobStoreFull, match="DINOSERVE_BLOB_MAX_BYTES"):
        blobs.ensure_all([("1" * 64, b"xxx"), ("2" * 64, b"yyyy")])  # 4 + 7 > 10
    assert not blobs.exists("1" * 64) and not blobs.exists("2" * 64)  # none of the batch
    assert blobs.read(a) == b"aaaa" and blobs.usage.total() == 4  # nothing else changed
    blobs.ensure("3" * 64, b"666666")  # exactly full
    assert blobs.usage.total() == 10
    blobs.ensure("3" * 64, b"666666")  # there already: costs nothing, refused nothing
    with pytest.raises(BlobStoreFull):
        blobs.put(b"z")
    blobs.ensure("4" * 64, b"zz", limit=False)  # bytes a point names already: always written
    assert blobs.exists("4" * 64) and blobs.usage.total() == 12


def test_the_total_survives_restarts_and_is_rebuilt_when_lost(tmp_path):
    root = tmp_path / "b"
    first = Blobs(root, max_bytes=100)
    first.put(b"x" * 30)
    first.put(b"y" * 20)
    again = Blobs(root, max_bytes=100)  # another process, or after a restart
    assert again.usage.total() == 50 and (root / LEDGER).read_text() == "50\n"
    (root / LEDGER).unlink()  # lost: summed from the tree once, then kept again
    assert Blobs(root).usage.total() == 50
    (root / LEDGER).write_text("garbage")  # torn: the same
    assert Blobs(root).usage.total() == 50


def test_removals_count_out_and_a_restore_counts_once(tmp_path):
    blobs = Blobs(tmp_path / "b", max_bytes=100)
    sha = blobs.put(b"p" * 40)
    hidden = blobs.hide(sha)
    blobs.ensure(sha, b"p" * 40, limit=False)  # an add wrote it again while it was hidden
    assert blobs.usage.total() == 80  # both copies exist for a moment
    blobs.restore(sha, hidden)  # the add's copy stays, the hidden one goes
    assert blobs.usage.total() == 40 and blobs.read(sha) == b"p" * 40
    assert not hidden.exists()
    blobs.drop(blobs.hide(sha))
    assert blobs.usage.total() == 0 and not blobs.exists(sha)


def test_concurrent_writers_of_the_same_bytes_count_them_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "b"
    data = [bytes([i]) * 1000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # each its own Blobs, as each request has
        list(pool.map(lambda i: Blobs(root, False, 10**6).put(data[i % 8]), range(64)))
    assert Blobs(root).usage.total() == 8000 == sum(len(d) for d in data)


def test_a_sweep_recounts(tmp_path):
    from core.blobs import sweep
    from tests.stores import edge_store

    db = edge_store(tmp_path / "q")
    blobs = Blobs(tmp_path / "b")
    try:
        blobs.put(b"kept?")
        (tmp_path / "b" / LEDGER).write_text("999\n")  # drifted (a crash mid-add, say)
        assert sweep(db, blobs) == 1  # no point names it
        assert blobs.usage.total() == 0
    finally:
        db.close()
