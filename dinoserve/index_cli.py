"""`dinoserve index`: in this process, or — when a running service owns the embedded store —
handed to that service through its admin API (POST /admin/index), with the same progress,
summary and failure report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from core import store
from core.settings import Settings
from dinoserve.models_cli import CliError, Service
from indexer.run import IndexRequest, index_source


def _absolute(path: str | None) -> str | None:
    # The service resolves paths from its own working directory: send absolute ones.
    return str(Path(path).resolve()) if path else path


def request_from(args: argparse.Namespace) -> IndexRequest:
    return IndexRequest(
        source=_absolute(args.source) or "",
        collection=args.collection,
        labels=args.labels,
        manifest=_absolute(args.manifest),
        batch=args.batch,
        workers=args.workers,
        shard=args.shard,
        prune=args.prune,
        failures=_absolute(args.failures),
    )


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    req = request_from(args)
    try:
        report = index_source(settings, req)
    except store.StoreLocked as exc:
        try:
            return hand_off(settings, req, str(exc))
        except CliError as refusal:
            print(f"dinoserve: error: {refusal}", file=sys.stderr)
            return 2
    except store.StoreError as exc:
        print(f"dinoserve: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.failed:
        print(f"skipped images and reasons: {report.failures_path}")
    return 0


def hand_off(settings: Settings, req: IndexRequest, locked: str, poll_s: float = 0.5) -> int:
    """Run the job in the service that owns the store; print its progress and report.

    Raises:
        CliError: no admin key, no service answering, or the service refused the job.
    """
    svc = Service(settings)
    if not settings.admin_api_key:
        raise CliError(
            f"{locked}.\nTo index while the service runs, set DINOSERVE_ADMIN_API_KEY to its "
            f"admin key: `dinoserve index` then hands the job to it at {svc.base}. Or stop the "
            "service and run the command again."
        )
    given = {k: v for k, v in req.as_dict().items() if v not in (None, "")}
    params = {k: str(v) for k, v in given.items() if k not in ("batch", "workers")}
    params["prune"] = "true" if req.prune else "false"
    st = svc.call("POST", "/admin/index", **params)
    if st is None:
        raise CliError(
            f"{locked}, but no service answers at {svc.base}: set DINOSERVE_SERVE__HOST and "
            "DINOSERVE_SERVE__PORT to the service's address, or stop the process that holds "
            "the store."
        )
    print(f"the service at {svc.base} owns the store: it runs the job ({st['job']})")
    with tqdm(total=st["total"] or None, unit="img", desc="index (service)") as bar:
        while st["state"] == "running":
            time.sleep(poll_s)
            st = svc.call("GET", "/admin/index") or {"state": "failed", "error": "service gone"}
            if st.get("total"):
                bar.total = st["total"]
            bar.update(st.get("done", bar.n) - bar.n)
            if st.get("stage") == "building index":
                bar.set_postfix_str(f"building the search index, {st['building_s']:.0f}s")
    if st["state"] != "done":
        print(
            f"dinoserve: error: indexing failed in the service: {st.get('error')}", file=sys.stderr
        )
        return 1
    print(st["summary"])
    if st["failed"]:
        print(f"skipped images and reasons: {st['failures_path']}")
    return 0
