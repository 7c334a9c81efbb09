"""indexer.ingest.Ingest: when a run fails, nothing it started still touches the store."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from PIL import Image

from indexer.ingest import DECODE_NICE, Ingest, IngestOptions, Item
from tests.fakes import DIM, FakeEngine
from tests.stores import edge_store


def test_a_failed_run_returns_only_after_its_reads_of_the_store_end(tmp_path):
    for i in range(40):
        Image.new("RGB", (8, 8), (10 + i * 6, 50, 80)).save(tmp_path / f"{i:02d}.png")
    items = [Item(str(tmp_path / f"{i:02d}.png")) for i in range(40)]
    db = edge_store(tmp_path / "q")
    physical = db.create_physical("shapes__v1", DIM)
    busy = threading.Event()  # the producer is inside existing_hashes
    real = db.existing_hashes

    def slow_hashes(*args, **kwargs):
        busy.set()
        try:
            time.sleep(0.3)  # a slow read of the shard, still going when the batch fails
            return real(*args, **kwargs)
        finally:
            busy.clear()

    db.existing_hashes = slow_hashes

    def fail(batch) -> None:
        assert busy.wait(5)  # the next batch's read has begun
        raise OSError("disk full (injected)")

    with pytest.raises(OSError, match="injected"):
        Ingest(db, FakeEngine(), physical, IngestOptions(batch=4, workers=1)).run(
            items, on_batch=fail
        )
    assert not busy.is_set()  # no read of the store outlives the run…
    assert not [t for t in threading.enumerate() if t.name.startswith(("decode", "upsert"))]
    db.delete_collections([physical])  # …so a failed refresh's abort can drop it at once
    assert physical not in db.collections()
    db.close()


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
def test_decode_threads_yield_the_cpu_to_the_engine(tmp_path):
    for i in range(6):
        Image.new("RGB", (8, 8), (10 + i * 6, 50, 80)).save(tmp_path / f"{i}.png")
    seen: dict[str, set[int]] = {"decode": set(), "embed": set()}

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Watched(FakeEngine):
        def preprocess(self, img):
            seen["decode"].add(nice())
            return super().preprocess(img)

        def embed(self, batch):
            seen["embed"].add(nice())
            return super().embed(batch)

    before = nice()
    db = edge_store(tmp_path / "q")
    physical = db.create_physical("shapes__v1", DIM)
    items = [Item(str(tmp_path / f"{i}.png")) for i in range(6)]
    Ingest(db, Watched(), physical, IngestOptions(batch=2, workers=2)).run(items)
    assert db.count(physical) == 6
    db.close()
    assert seen == {"decode": {DECODE_NICE}, "embed": {before}}  # the engine's thread untouched
    assert nice() == before
