"""The steps of a refresh and a rollback, shared by the service (POST /admin/refresh) and the CLI
(`dinoserve refresh` with no service running): prepare (load and verify the new package,
re-embed every collection the served version serves) → commit (flip all aliases in one call,
then move CURRENT) — or abort (drop the collections this refresh created). Until commit, nothing
that is served changes; the caller swaps its engine after commit.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import package, refresh, store
from core.engines import Engine, load_engine
from core.settings import Settings
from core.store import Store
from core.versions import VersionError, previous

log = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# What the status shows of each collection's ReembedReport.
STATUS_COUNTS = ("source", "target", "total", "done", "written", "unchanged", "failed")


@dataclass
class RefreshStatus:
    """What GET /admin/refresh reports (and the CLI prints). Written by one worker thread."""

    job: str = ""
    state: str = "idle"  # idle | running | done | failed
    phase: str = ""  # loading | reembedding | switching
    from_version: str | None = None
    to_version: str | None = None
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)  # images left out
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def begin(cls, job: str, served: str | None, target: str) -> RefreshStatus:
        return cls(job, "running", "loading", served, target, started_at=_now())

    def update(self, alias: str, r: refresh.ReembedReport) -> None:
        # New objects, rebound in one assignment: a reader in another thread (GET
        # /admin/refresh) never iterates a dict or list while it changes.
        row = {k: getattr(r, k) for k in STATUS_COUNTS}
        self.collections = {**self.collections, alias: row}
        seen = {f["uri"] for f in self.failures}
        new = [f for f in r.failures if f["uri"] not in seen]
        if new:
            self.failures = (self.failures + new)[: refresh.MAX_REPORTED]

    def end(self, error: str | None = None) -> None:
        self.state, self.error, self.finished_at = ("failed" if error else "done"), error, _now()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    engine: Engine  # the version switched to (engine.meta: its package card)
    targets: dict[str, str]  # alias → new physical collection
    sources: dict[str, str]  # alias → the physical collection it points to now
    served: str | None = None  # the version switched away from

    @property
    def version(self) -> str:
        """The version switched to."""
        return self.engine.model_version


def prepare(
    q: Store,
    settings: Settings,
    name_dir: Path,
    served: str | None,
    target: str,
    status: RefreshStatus,
    created: list[str],
    should_stop: Callable[[], bool] | None = None,
) -> Prepared:
    """Load `target` and re-embed every collection whose alias points to the served version.

    Args:
        created: receives the physical collections this call creates (for `abort`).
    Raises:
        VersionError: too many images of a collection could not be read again.
    """
    status.phase = "loading"
    engine = load_engine(name_dir / target, settings.engine, settings.inference)  # verifies sha256s
    sources = q.collections_of_version(served) if served else {}
    status.phase = "reembedding"
    r = settings.refresh
    targets: dict[str, str] = {}
    for alias, source in sorted(sources.items()):
        physical = store.physical_name(alias, target)
        if not q.exists(physical):
            created.append(physical)
        q.ensure_collection(alias, target, engine.dim)
        progress = functools.partial(status.update, alias)
        report = refresh.reembed(
            q,
            source,
            physical,
            engine,
            settings.max_pixels,
            r.batch,
            r.workers,
            progress,
            should_stop,
            blob_dir=settings.blob_dir,
        )
        status.update(alias, report)
        log.info(
            "re-embedded %s → %s: %d written, %d unchanged, %d left out of %d",
            *(source, physical, report.written, report.unchanged, report.failed, report.total),
        )
        if report.total and report.failed > r.max_failed_fraction * report.total:
            raise VersionError(
                f"{alias}: {report.failed} of {report.total} images could not be read again "
                f"(more than DINOSERVE_REFRESH__MAX_FAILED_FRACTION={r.max_failed_fraction})"
            )
        targets[alias] = physical
    status.phase = "switching"
    return Prepared(engine, targets, sources, served)


def catch_up(
    q: Store,
    settings: Settings,
    p: Prepared,
    created: list[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """One more pass of every served collection into its target, for what writes over HTTP
    changed since the last pass: new and replaced images embedded, labels copied, deletions
    applied. A collection created meanwhile (POST /collections/{name}) joins `p`. Returns the
    number of points changed (0: every target matches its source).

    Args:
        p: the prepared switch; `p.sources` are re-read (the aliases still point there).
        created: receives the physical collections this call creates (for `abort`).
    """
    sources = q.collections_of_version(p.served) if p.served else dict(p.sources)
    r, total = settings.refresh, 0
    for alias, source in sorted(sources.items()):
        physical = store.physical_name(alias, p.version)
        if not q.exists(physical) and created is not None:
            created.append(physical)
        q.ensure_collection(alias, p.version, p.engine.dim)
        report = refresh.reembed(
            q,
            source,
            physical,
            p.engine,
            settings.max_pixels,
            r.batch,
            r.workers,
            None,
            should_stop,
            blob_dir=settings.blob_dir,
            optimize=False,
        )
        n = refresh.changes(report)
        if n:
            counts = (report.written, report.synced, report.deleted)
            log.info(
                "caught up %s → %s: %d written, %d relabelled, %d deleted",
                source,
                physical,
                *counts,
            )
        total += n
        p.sources[alias], p.targets[alias] = source, physical
    return total


def commit(q: Store, name_dir: Path, p: Prepared) -> None:
    """Flip every alias in one call, then move CURRENT; if CURRENT cannot move, flip back."""
    q.flip(p.targets)
    try:
        package.switch_current(name_dir, p.version)
    except BaseException:
        q.flip(p.sources)
        raise


def abort(q: Store, created: list[str]) -> None:
    """Drop the physical collections a failed refresh created (never one an alias points to);
    collections it only added to are kept: they hold that version's embeddings either way."""
    q.delete_collections(created)


def prepare_rollback(q: Store, settings: Settings, name_dir: Path, served: str) -> Prepared:
    """Load the previous version and map every served alias back to its collection.

    Raises:
        VersionError: no older version, or one of its collections is gone (gc).
    """
    target = previous(name_dir, served)
    sources = q.collections_of_version(served)
    targets = {a: store.physical_name(a, target) for a in sources}
    missing = [p for p in targets.values() if not q.exists(p)]
    if missing:
        raise VersionError(f"cannot roll back to {target}: {', '.join(missing)} no longer exist")
    engine = load_engine(name_dir / target, settings.engine, settings.inference)
    return Prepared(engine, targets, sources, served)
