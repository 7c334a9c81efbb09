"""`dinoserve refresh` and `dinoserve models list|rollback|gc|bench`.

A running service owns the embedded Qdrant (one process may open it), so when one answers at
DINOSERVE_SERVE__HOST/PORT the commands ask it through its admin API (DINOSERVE_ADMIN_API_KEY);
with no service they run the same refresh job in-process (refresh/job.py). `--local` skips
the service
(a Qdrant server can be shared: an external job may re-index while a service serves).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import package, store
from core.blobs import Blobs
from core.settings import Settings
from refresh import job as refresh_job
from refresh import versions
from refresh.job import RefreshJob, RefreshStatus

log = logging.getLogger(__name__)


class CliError(RuntimeError):
    """A refusal to report (exit 2): the service said no, or the store is in use."""


class Service:
    """The HTTP API of a service at the configured address, if one is listening: the admin
    routes by default, or others with the key named by `key_var` (the variable to set)."""

    def __init__(
        self,
        settings: Settings,
        key: str | None = None,
        key_var: str = "DINOSERVE_ADMIN_API_KEY",
        key_name: str = "admin key",
    ) -> None:
        host = settings.serve.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.base = f"http://{host}:{settings.serve.port}"
        self.key = settings.admin_api_key if key is None else key
        self.key_var, self.key_name = key_var, key_name

    def _advice(self, status: int, code: str, message: str) -> str:
        """What a command-line user does about a refusal (not the HTTP headers to send)."""
        if status == 401:
            return (
                f"the service at {self.base} needs its {self.key_name}: set {self.key_var} to "
                "it and run the command again"
            )
        if status == 403 and code == "admin_disabled":
            return (
                f"the service at {self.base} has its admin routes off: restart it with "
                "DINOSERVE_ADMIN_API_KEY set, or stop it and use --local"
            )
        if status == 403:
            return f"{self.key_var} is not the {self.key_name} of the service at {self.base}"
        return message

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: str
    ) -> dict[str, Any] | None:
        """The JSON answer, or None when nothing listens there; `body` is sent as JSON."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.base}{path}?{query}" if query else f"{self.base}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "", exc.reason
            raise CliError(
                f"{method} {self.base}{path}: {exc.code} {self._advice(exc.code, code, message)}"
            ) from exc
        except (urllib.error.URLError, ConnectionError) as exc:
            log.debug("no service at %s: %s", self.base, exc)
            return None


@contextmanager
def open_store(settings: Settings) -> Iterator[store.Store]:
    try:
        db = store.open_store(settings)
    except store.StoreUnusable as exc:  # e.g. the embedded store is open in another process
        raise CliError(
            f"the embedded store {settings.qdrant_path} is in use by another process, and no "
            f"service answers at {Service(settings).base}: if a `dinoserve serve` owns it, set "
            "DINOSERVE_SERVE__HOST and DINOSERVE_SERVE__PORT to its address; else stop the "
            "other process"
        ) from exc
    try:
        yield db
    finally:
        db.close()


def _service(args: argparse.Namespace, settings: Settings) -> Service | None:
    return None if args.local else Service(settings)


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    svc = _service(args, settings)
    if svc is not None and (st := svc.call("POST", "/admin/refresh", version=args.version)):
        print(f"service {svc.base}: refresh {st['from_version']} → {st['to_version']}")
        while st["state"] == "running":
            time.sleep(args.poll_s)
            st = svc.call("GET", "/admin/refresh") or {"state": "failed", "error": "service gone"}
            done = {a: f"{c['done']}/{c['total']}" for a, c in st.get("collections", {}).items()}
            print(f"  {st['state']} {st.get('phase', '')} {done}")
        return _report(st)
    return _report(refresh_local(settings, args.version).as_dict())


def _report(st: dict[str, Any]) -> int:
    for f in st.get("failures", [])[:20]:
        print(f"  left out: {f['uri']} ({f['reason']}: {f['message']})")
    if st["state"] != "done":
        print(f"refresh failed, still serving {st['from_version']}: {st['error']}")
        return 1
    print(f"serving {st['to_version']} (was {st['from_version']})")
    return 0


def refresh_local(settings: Settings, version: str | None) -> RefreshStatus:
    """Refresh in this process: re-embed, flip the aliases, move CURRENT (the job's `run`)."""
    name_dir = versions.registry_dir(settings.models_dir, settings.model)
    served = versions.current_or_none(name_dir)
    target = versions.refresh_target(name_dir, served, version)
    status = RefreshStatus.begin("local", served, target)
    if target == served or served is None:  # nothing indexed under a served version yet
        package.switch_current(name_dir, target)
        status.end()
        return status
    with open_store(settings) as q:
        return RefreshJob(q, settings, name_dir, status).run()


def _served_by(svc: Service | None) -> dict[str, Any] | None:
    """What a running service serves, from its open readiness route (no key needed): its
    `model_version`, or None when no service answers (or it is not ready)."""
    if svc is None:
        return None
    try:
        return svc.call("GET", "/readyz")
    except CliError as exc:
        log.warning("the service answers but is not ready: %s", exc)
        return None


def registry_names(models_dir: Path) -> list[str]:
    """Every model name in the registry with at least one complete version, sorted."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and package.list_versions(p)
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Every model of the registry and its versions: which is CURRENT, which a running service
    serves (only a service that answers says so), and the collections of each version."""
    svc = _service(args, settings)
    ready = _served_by(svc)
    served = ready.get("model_version") if ready else None
    info: dict[str, Any] | None = None  # the served model's collections, from its service
    if ready is not None and settings.admin_api_key:
        info = svc.call("GET", "/admin/models") if svc is not None else None
    elif ready is not None:
        log.warning("collections not shown: the service's store needs DINOSERVE_ADMIN_API_KEY")
    names = registry_names(settings.models_dir)
    where = f"served by {svc.base}" if ready else "served: no service answers"
    if svc is not None and not ready:
        where += f" at {svc.base}"
    print(f"models in {settings.models_dir}  (* CURRENT, > {where})")
    if not names:
        print("  none yet: make demo, dinoserve export, or dinoserve import")
        return 0

    def show(q: store.Store | None) -> list[str]:
        lines = []
        for name in names:
            name_dir = Path(settings.models_dir) / name
            own = served if served in package.list_versions(name_dir) else None
            described = refresh_job.describe(q, name_dir, own)
            if info is not None and info.get("model") == name:
                described = info
            lines.append(f"model {name}")
            for row in described["versions"]:
                mark = ("*" if row["current"] else " ") + (">" if row["served"] else " ")
                lines.append(f"{mark} {row['version']}  {_collections_line(row['collections'])}")
        return lines

    lines = None
    if ready is None:  # else the service owns the store: only its answer has collections
        try:
            with open_store(settings) as q:
                lines = show(q)
        except (CliError, store.StoreError) as exc:
            log.warning("collections unknown: %s", exc)
    print("\n".join(lines if lines is not None else show(None)))
    return 0


def _collections_line(cols: dict[str, dict[str, Any]] | None) -> str:
    """`shapes__v2 60 pts ← shapes, …` (empty when the store was not at hand)."""
    if cols is None:
        return ""
    shown = [
        f"{name} {c['points']} pts" + (f" ← {c['alias']}" if c["alias"] else "")
        for name, c in cols.items()
    ]
    return ", ".join(shown) or "no collections"


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    svc = _service(args, settings)
    out = svc.call("POST", "/admin/rollback") if svc is not None else None
    if out is None:
        name_dir = versions.registry_dir(settings.models_dir, settings.model)
        served = package.current_version(name_dir)
        with open_store(settings) as q:
            job = RefreshJob.rollback(q, settings, name_dir, served)
            p = job.prepare_rollback()
            job.commit(p)
        out = {"from_version": served, "to_version": p.version, "collections": p.targets}
    print(f"rolled back {out['from_version']} → {out['to_version']}: {out['collections']}")
    return 0


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    svc = _service(args, settings)
    out = svc.call("POST", "/admin/gc") if svc is not None else None
    if out is None:
        name_dir = versions.registry_dir(settings.models_dir, settings.model)
        served = package.current_version(name_dir)
        with open_store(settings) as q:
            blob_store = Blobs(settings.blob_dir, settings.blob_fsync)
            out = refresh_job.gc(
                q, name_dir, served, keep=settings.refresh.keep_versions, blob_store=blob_store
            )
    print(
        f"deleted versions: {out['deleted_versions'] or 'none'}; "
        f"collections: {out['deleted_collections'] or 'none'}; "
        f"uploaded images no longer used: {out.get('deleted_blobs', 0)}"
    )
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Time and guard the package's variants here; record the fastest passing one for
    DINOSERVE_ENGINE=auto (evaluation/variant_bench.py, core/engine_choice.py)."""
    from core.engine_choice import write_record
    from evaluation.real_images import Preprocessing, load_real_images
    from evaluation.variant_bench import bench_package

    package_dir = package.resolve(settings.models_dir, args.model or settings.model)
    meta = package.verify(package_dir)
    source = args.images or settings.quantize.calibration_dir or settings.samples_dir
    if source is not None:
        prep = Preprocessing(meta.img_size, meta.mean, meta.std, meta.crop_pct)
        (held,) = load_real_images(Path(source), prep, [settings.quantize.guard_images])
        images, labels = held.images, held.labels
        print(f"guard images: {len(images)} from {source}" + (", labelled" if labels else ""))
    else:
        from training.onnx_export import check_images

        images = check_images(meta.img_size, meta.mean, meta.std, meta.crop_pct)["real"]
        labels = None
        print(
            "guard images: the export's real-looking check images (no k-NN): name real ones "
            "with --images DIR or DINOSERVE_QUANTIZE__CALIBRATION_DIR"
        )
    batches = sorted(
        {int(b) for b in args.batches.split(",")} if args.batches else {1, settings.serve.max_batch}
    )
    record = bench_package(
        package_dir,
        images,
        labels,
        batches,
        settings.inference.intra_op_threads or (os.cpu_count() or 1),
        args.seconds,
        args.rounds,
        settings.quantize,
        progress=print,
    )
    path = write_record(package_dir, record)
    c = record.chosen
    print(f"chosen: {c.engine} {c.variant} (recorded in {path}; DINOSERVE_ENGINE=auto serves it)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `refresh` and `models` on the CLI's subparsers."""
    r = sub.add_parser("refresh", help="re-embed every served collection with a new version")
    r.add_argument("--version", default=None, help="default: the newest version not served")
    r.add_argument("--poll-s", type=float, default=2.0, help="progress interval (service)")
    m = sub.add_parser("models", help="list, roll back or gc versions of the served model")
    msub = m.add_subparsers(dest="models_command", required=True)
    gc_help = "delete versions beyond DINOSERVE_REFRESH__KEEP_VERSIONS"
    parsers = [
        (r, cmd_refresh),
        (msub.add_parser("list", help="versions, CURRENT, collections and counts"), cmd_list),
        (msub.add_parser("rollback", help="serve the previous version again"), cmd_rollback),
        (msub.add_parser("gc", help=gc_help), cmd_gc),
    ]
    for p, func in parsers:
        p.add_argument(
            "--local", action="store_true", help="do it in this process, even if a service answers"
        )
        p.set_defaults(func=_guarded(func), reads_settings=True)
    b = msub.add_parser(
        "bench", help="time and guard the variants here; record the fastest for ENGINE=auto"
    )
    b.add_argument("model", nargs="?", default=None, help="name or package (default: served)")
    b.add_argument(
        "--images",
        default=None,
        help="real images for the guard (class folders add k-NN); default "
        "DINOSERVE_QUANTIZE__CALIBRATION_DIR, else DINOSERVE_SAMPLES_DIR",
    )
    b.add_argument("--batches", default=None, help="default: 1 and DINOSERVE_SERVE__MAX_BATCH")
    b.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    b.set_defaults(func=_guarded(cmd_bench), reads_settings=True)


def _guarded(func: Any) -> Any:
    """Refusals become one line on stderr and exit status 2, as the other commands do."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except (CliError, versions.VersionError, store.StoreError) as exc:
            print(f"dinoserve: error: {exc}", file=sys.stderr)
            return 2

    return run
