"""The refresh job: the one implementation of a model switch that the service's admin routes
(api/refresh.py) and the CLI (`dinoserve refresh`, `dinoserve models …`) both drive.

A refresh: plan (refresh.versions picks the target) → prepare (load and verify the new package,
re-embed every collection the served version serves) → commit (flip all aliases in one call,
then move CURRENT) — or abort (drop the collections this refresh created). Until commit, nothing
that is served changes. A rollback prepares the previous version's kept collections and commits
the same way. The service passes `run` its own switch (catch-up passes with writes held off,
the engine swap around the commit); the CLI commits directly. `describe` and `gc` are the store
work on a model's versions; which versions they concern is refresh.versions' policy.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import blobs, package, store
from core.blobs import Blobs
from core.engine_choice import load_engine
from core.engines import Engine
from core.settings import Settings
from core.store import Store
from refresh import reembed, versions
from refresh.versions import VersionError

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
    phase: str = ""  # loading | reembedding | catching_up | switching
    from_version: str | None = None
    to_version: str | None = None
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)  # images left out
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def begin(cls, job: str, served: str | None, target: str) -> RefreshStatus:
        return cls(
            job=job,
            state="running",
            phase="loading",
            from_version=served,
            to_version=target,
            started_at=_now(),
        )

    def update(self, alias: str, r: reembed.ReembedReport) -> None:
        # New objects, rebound in one assignment: a reader in another thread (GET
        # /admin/refresh) never iterates a dict or list while it changes.
        row = {k: getattr(r, k) for k in STATUS_COUNTS}
        self.collections = {**self.collections, alias: row}
        seen = {f["uri"] for f in self.failures}
        new = [f for f in r.failures if f["uri"] not in seen]
        if new:
            self.failures = (self.failures + new)[: reembed.MAX_REPORTED]

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


# Brings the prepared targets live: `RefreshJob.commit` plus whatever the caller does around it
# (the service: catch-up passes, writes held off, the engine swap).
Switch = Callable[["RefreshJob", Prepared], None]


@dataclass
class RefreshJob:
    """One refresh (or rollback) of a model's served version in one store.

    Args:
        q: the store (with the batch retry policy).
        settings: the service settings (engine, refresh batch sizes, limits).
        name_dir: the model's registry folder (`refresh.versions.registry_dir`).
        status: what the job reports; `from_version` is the served version, `to_version` the
            target.
        should_stop: polled between batches; True stops the job (it is aborted).
    """

    q: Store
    settings: Settings
    name_dir: Path
    status: RefreshStatus
    should_stop: Callable[[], bool] | None = None
    created: list[str] = field(default_factory=list)  # physical collections made (for abort)

    @classmethod
    def rollback(cls, q: Store, settings: Settings, name_dir: Path, served: str) -> RefreshJob:
        """A job back to the newest version older than `served`.

        Raises:
            VersionError: nothing older is kept.
        """
        status = RefreshStatus.begin("rollback", served, versions.previous(name_dir, served))
        return cls(q, settings, name_dir, status)

    def run(self, switch: Switch | None = None) -> RefreshStatus:
        """Prepare, then switch (default: `commit`); on any failure abort and keep serving the
        served version. Returns the status, ended done or failed."""
        self.status.end(self.attempt(switch))
        return self.status

    def attempt(self, switch: Switch | None = None) -> str | None:
        """`run` without ending the status: None when done, else why it failed (aborted).
        The service ends the status itself, on its event loop, as it frees its job runner:
        whoever sees "done" may start the next operation at once."""
        st = self.status
        try:
            p = self.prepare()
            (switch or RefreshJob.commit)(self, p)
            log.info("refresh %s done: serving %s (%s)", st.job, st.to_version, st.collections)
            return None
        except Exception as exc:  # any failure: report it, keep serving the old version
            reason = f"{type(exc).__name__}: {exc}"
            log.error(
                "refresh %s to %s failed, still serving %s: %s",
                *(st.job, st.to_version, st.from_version, reason),
            )
            try:
                self.abort()
            except Exception:
                log.exception("refresh %s: could not drop %s", st.job, self.created)
            return reason

    def load(self) -> Engine:
        """The target version's engine (its package's sha256s verified)."""
        target = str(self.status.to_version)
        return load_engine(self.name_dir / target, self.settings.engine, self.settings.inference)

    def prepare(self) -> Prepared:
        """Load the target and re-embed every collection whose alias points to the served
        version into the target's collections.

        Raises:
            VersionError: too many images of a collection could not be read again.
        """
        st, q, r = self.status, self.q, self.settings.refresh
        st.phase = "loading"
        engine = self.load()
        served = st.from_version
        sources = q.collections_of_version(served) if served else {}
        st.phase = "reembedding"
        targets: dict[str, str] = {}
        for alias, source in sorted(sources.items()):
            physical = self._target(alias, engine)
            report = self._reembed(source, physical, engine, functools.partial(st.update, alias))
            st.update(alias, report)
            log.info(
                "re-embedded %s → %s: %d written, %d unchanged, %d left out of %d",
                *(source, physical, report.written, report.unchanged, report.failed),
                report.total,
            )
            if report.total and report.failed > r.max_failed_fraction * report.total:
                raise VersionError(
                    f"{alias}: {report.failed} of {report.total} images could not be read again "
                    f"(more than DINOSERVE_REFRESH__MAX_FAILED_FRACTION={r.max_failed_fraction})"
                )
            targets[alias] = physical
        st.phase = "switching"
        return Prepared(engine, targets, sources, served)

    def catch_up(self, p: Prepared) -> int:
        """One more pass of every served collection into its target, for what writes over HTTP
        changed since the last pass: new and replaced images embedded, labels copied, deletions
        applied. A collection created meanwhile (POST /collections/{name}) joins `p`. Returns
        the number of points changed (0: every target matches its source).

        Args:
            p: the prepared switch; `p.sources` are re-read (the aliases still point there).
        """
        q, total = self.q, 0
        sources = q.collections_of_version(p.served) if p.served else dict(p.sources)
        for alias, source in sorted(sources.items()):
            physical = self._target(alias, p.engine)
            report = self._reembed(source, physical, p.engine, optimize=False)
            n = reembed.changes(report)
            if n:
                log.info(
                    "caught up %s → %s: %d written, %d relabelled, %d deleted",
                    *(source, physical, report.written, report.synced, report.deleted),
                )
            total += n
            p.sources[alias], p.targets[alias] = source, physical
        return total

    def prepare_rollback(self) -> Prepared:
        """Load the previous version and map every served alias back to its kept collection.

        Raises:
            VersionError: one of its collections is gone (gc).
        """
        served, target = str(self.status.from_version), str(self.status.to_version)
        sources = self.q.collections_of_version(served)
        targets = {a: store.physical_name(a, target) for a in sources}
        missing = [p for p in targets.values() if not self.q.exists(p)]
        if missing:
            raise VersionError(
                f"cannot roll back to {target}: {', '.join(missing)} no longer exist"
            )
        return Prepared(self.load(), targets, sources, served)

    def commit(self, p: Prepared) -> None:
        """Flip every alias in one call, then move CURRENT; if CURRENT cannot move, flip back."""
        self.q.flip(p.targets)
        try:
            package.switch_current(self.name_dir, p.version)
        except BaseException:
            self.q.flip(p.sources)
            raise

    def abort(self) -> None:
        """Drop the physical collections this job created (never one an alias points to);
        collections it only added to are kept: they hold that version's embeddings either way."""
        self.q.delete_collections(self.created)

    def _target(self, alias: str, engine: Engine) -> str:
        """`<alias>__<engine's version>`, created (and remembered for `abort`) if missing."""
        physical = store.physical_name(alias, engine.model_version)
        if not self.q.exists(physical):
            self.created.append(physical)
        self.q.ensure_collection(alias, engine.model_version, engine.dim)
        return physical

    def _reembed(
        self,
        source: str,
        target: str,
        engine: Engine,
        progress: Callable[[reembed.ReembedReport], None] | None = None,
        optimize: bool = True,
    ) -> reembed.ReembedReport:
        s = self.settings
        return reembed.reembed(
            self.q,
            source,
            target,
            engine,
            max_pixels=s.max_pixels,
            batch=s.refresh.batch,
            workers=s.refresh.workers,
            progress=progress,
            should_stop=self.should_stop,
            blob_dir=s.blob_dir,
            optimize=optimize,
        )


def describe(q: Store | None, name_dir: Path, served: str | None) -> dict[str, Any]:
    """Versions of a model (oldest first) with CURRENT, the served one, and — when the store is
    at hand — each version's physical collections, their point counts and aliases."""
    current = versions.current_or_none(name_dir)
    physical: dict[str, list[str]] = {}
    live: dict[str, str] = {}
    if q is not None:
        live = {p: a for a, p in q.aliases().items()}
        physical = q.physical_by_version()

    def collections(version: str) -> dict[str, dict[str, Any]] | None:
        if q is None:
            return None
        names = sorted(physical.get(version, []))
        return {p: {"points": q.count(p), "alias": live.get(p)} for p in names}

    rows = [
        {
            "version": v,
            "current": v == current,
            "served": v == served,
            "collections": collections(v),
        }
        for v in package.list_versions(name_dir)
    ]
    return {"model": name_dir.name, "current": current, "served": served, "versions": rows}


def gc(
    q: Store | None, name_dir: Path, served: str, keep: int, blob_store: Blobs | None = None
) -> dict[str, Any]:
    """Delete the versions `refresh.versions.gc_candidates` names: their packages and physical
    collections (collections only when `q` is given; never one an alias points to), and then
    the uploaded images (`blob_store`) that no remaining point names."""
    victims = versions.gc_candidates(name_dir, served, keep)
    dropped: list[str] = []
    if q is not None and victims:
        by_version = q.physical_by_version()
        dropped = q.delete_collections([n for v in victims for n in by_version.get(v, [])])
    for v in victims:
        shutil.rmtree(name_dir / v)
    swept = blobs.sweep(q, blob_store) if q is not None and blob_store and dropped else 0
    return {"deleted_versions": victims, "deleted_collections": dropped, "deleted_blobs": swept}
