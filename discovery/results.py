"""Cluster jobs on disk: one JSON record per job under `<clusters_dir>/<physical collection>/`,
so results are kept per model version and survive a restart, and a cache that finds the result
of the same request on an unchanged collection.

A record holds the job's state (running, done, failed, interrupted), its request, progress and,
once done, its result. A record still "running" that no live process owns was cut off by a
stop or crash: readers report it as "interrupted" (`as_seen`), never as a job to wait for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from core.store import SEP, Store, StoreError, check_name
from discovery.clusters import (
    ClusterParams,
    NotEnoughPoints,
    Stopped,
    Tuning,
    cluster,
    read_embeddings,
)

JOB_RE = re.compile(r"^[0-9a-f]{12}$")
INTERRUPTED = (
    "the job stopped before it finished (the service or command was stopped); start it again"
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def cache_key(physical: str, params: ClusterParams, tuning: Tuning, fingerprint: str) -> str:
    """What makes two results the same: the physical collection (so the model version), the
    request, the tuning and the collection's content."""
    what = {
        "physical": physical,
        "params": params.as_dict(),
        "tuning": tuning.as_dict(),
        "fingerprint": fingerprint,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def as_seen(record: dict[str, Any], live: bool) -> dict[str, Any]:
    """The record as a reader should see it: "running" only while a live process runs it."""
    if record.get("state") == "running" and not live:
        return {**record, "state": "interrupted", "error": INTERRUPTED}
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A job's record as clients see it: without the cache key and the fingerprint, and without
    each cluster's member list (GET …/clusters/{job}/{cluster} pages that)."""
    out = {k: v for k, v in record.items() if k not in ("key", "fingerprint")}
    result = record.get("result")
    if result:
        out["result"] = {
            **result,
            "clusters": [
                {k: v for k, v in c.items() if k not in ("members", "similarity")}
                for c in result["clusters"]
            ],
        }
    return out


class ClusterResults:
    """The records of cluster jobs under one folder (DINOSERVE_DISCOVERY__CLUSTERS_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, physical: str) -> Path:
        name, sep, version = physical.partition(SEP)
        check_name(name)
        if sep and not re.fullmatch(r"[A-Za-z0-9._-]+", version):
            raise ValueError(f"invalid physical collection {physical!r}")
        return self.root / physical

    def save(self, record: dict[str, Any]) -> None:
        """Write a job's record atomically (a reader never sees half of it); a done record also
        becomes the cached answer for its key."""
        folder = self._dir(record["physical_collection"])
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / f"{record['job']}.json", json.dumps(record))
        if record.get("state") == "done" and record.get("key"):
            _write_atomic(folder / f"key-{record['key']}", record["job"])

    def load(self, name: str, job: str) -> dict[str, Any] | None:
        """The record of `job` for logical collection `name` (any model version), or None."""
        check_name(name)
        if not JOB_RE.fullmatch(job):
            return None
        for folder in [*sorted(self.root.glob(f"{name}{SEP}*")), self.root / name]:
            path = folder / f"{job}.json"
            if path.is_file() and folder.name.partition(SEP)[0] == name:
                return json.loads(path.read_text())
        return None

    def cached(self, physical: str, key: str) -> dict[str, Any] | None:
        """The done record of an earlier job with this key, or None."""
        pointer = self._dir(physical) / f"key-{key}"
        try:
            job = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        path = self._dir(physical) / f"{job}.json"
        if not JOB_RE.fullmatch(job) or not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("state") == "done" and record.get("key") == key else None


def new_record(
    name: str, physical: str, params: ClusterParams, tuning: Tuning, key: str
) -> dict[str, Any]:
    """The record of a job about to run (state "running")."""
    return {
        "job": new_job_id(),
        "state": "running",
        "collection": name,
        "physical_collection": physical,
        "model_version": physical.partition(SEP)[2] or None,
        "params": params.as_dict(),
        "tuning": tuning.as_dict(),
        "key": key,
        "fingerprint": None,
        "progress": {"phase": "queued", "done": 0, "total": 0},
        "created_at": now(),
        "finished_at": None,
        "seconds": None,
        "error": None,
        "result": None,
    }


def run_job(
    results: ClusterResults,
    db: Store,
    record: dict[str, Any],
    threads: int,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run a "running" record to its end (blocking: a worker thread's work), saving it at the
    start and the end: done with its result (cached under the key of what was read), failed
    with the reason, or interrupted when `should_stop` said so.

    `record` is the live one (its progress moves) and stays "running"; the end state is the
    returned record, saved (and cached) before it is returned. A caller that shows the live
    record (the service) publishes the end only then, so whoever sees "done" finds the cache.
    """
    params, tuning = ClusterParams(**record["params"]), Tuning(**record["tuning"])
    physical = record["physical_collection"]

    def progress(phase: str, done: int, total: int) -> None:
        record["progress"] = {"phase": phase, "done": done, "total": total}
        if should_stop and should_stop():
            raise Stopped(f"stopped while {phase}")

    results.save(record)
    t0 = time.perf_counter()
    end: dict[str, Any] = {}
    try:
        # BLAS and OpenMP threads of k-means: few, so that requests keep their cores.
        with threadpool_limits(threads):
            emb = read_embeddings(db, physical, progress)
            result = cluster(emb, params, tuning, progress, should_stop)
        end.update(
            state="done",
            fingerprint=emb.fingerprint,
            result=result,
            key=cache_key(physical, params, tuning, emb.fingerprint),
            progress={"phase": "done", "done": 1, "total": 1},
        )
    except Stopped:
        end.update(state="interrupted", error=INTERRUPTED)
    except (NotEnoughPoints, StoreError) as exc:
        end.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        final = {**record, **end}
        final.update(finished_at=now(), seconds=round(time.perf_counter() - t0, 3))
        if final["state"] == "running":  # an unexpected error: it propagates to the log
            final.update(state="failed", error="an unexpected error; see the service's log")
        results.save(final)
    return final


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
