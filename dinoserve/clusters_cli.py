"""`dinoserve clusters NAME [--k 20]`: the clusters of a collection, as a table or JSON.

In this process when the store is free, with the same records as the service
(DINOSERVE_DISCOVERY__CLUSTERS_DIR): a result computed here is the service's cached answer
later, and the reverse. When a running service owns the embedded store, the command hands the
job to it (POST /collections/NAME/clusters, then follows GET …/{job}) rather than refusing:
the service is running exactly when someone explores a collection, and it keeps the result for
the page's Discover view too. That needs the write key (DINOSERVE_WRITE_API_KEY) or the admin
key whenever the service has keys, as every write under /collections does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from core import store
from core.settings import Settings
from dinoserve.models_cli import CliError, Service
from discovery.clusters import METHODS, ClusterParams, Tuning, fingerprint
from discovery.results import ClusterResults, cache_key, new_record, public, run_job


def params_from(args: argparse.Namespace) -> ClusterParams:
    if args.k is not None and args.k < 2:
        raise ValueError("--k must be at least 2")
    if args.k_min > args.k_max:
        raise ValueError(f"--k-min {args.k_min} is above --k-max {args.k_max}")
    return ClusterParams(args.k, args.k_min, args.k_max, args.seed, args.method)


def local(settings: Settings, db: store.Store, name: str, params: ClusterParams) -> dict:
    """Cluster `name` in this process (or take the cached result); returns the job's record."""
    d = settings.discovery
    physical = db.resolve(store.check_name(name))
    results = ClusterResults(d.clusters_dir)
    tuning = Tuning.of(d)
    key = cache_key(physical, params, tuning, fingerprint(db, physical))
    cached = results.cached(physical, key)
    if cached is not None:
        return {**cached, "cached": True}
    print(f"clustering {db.count(physical)} points of {physical} …", file=sys.stderr)
    record = new_record(name, physical, params, tuning, key)
    return run_job(results, db, record, d.cluster_threads)


def hand_off(
    settings: Settings, name: str, params: ClusterParams, locked: str, poll_s: float = 0.5
) -> dict:
    """Run the job in the service that owns the store; returns its record.

    Raises:
        CliError: no service answers, or it refused the job.
    """
    key = settings.write_api_key or settings.admin_api_key
    svc = Service(settings, key, key_var="DINOSERVE_WRITE_API_KEY", key_name="write key")
    path = f"/collections/{name}/clusters"
    body = {k: v for k, v in params.as_dict().items() if v is not None}
    record = svc.call("POST", path, body)
    if record is None:
        raise CliError(
            f"{locked}, but no service answers at {svc.base}: set DINOSERVE_SERVE__HOST and "
            "DINOSERVE_SERVE__PORT to the service's address, or stop the process that holds "
            "the store"
        )
    print(
        f"the service at {svc.base} owns the store: it runs the job ({record['job']})",
        file=sys.stderr,
    )
    while record["state"] == "running":
        time.sleep(poll_s)
        answer = svc.call("GET", f"{path}/{record['job']}")
        if answer is None:
            raise CliError(f"the service at {svc.base} stopped answering (job {record['job']})")
        record = answer
    return record


def table(record: dict[str, Any], shown: int = 3) -> str:
    """The result as lines for people: the whole, then one line per cluster."""
    r = record["result"]
    pct = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"{record['collection']} ({record['physical_collection']}): {r['points']} points, "
        f"{r['labelled']} labelled; k = {r['k']} ({r['k_chosen_by']}), {r['algorithm']}; "
        f"purity {pct(r['purity'])}, NMI {pct(r['nmi'])}",
        f"job {record['job']}{' (cached)' if record.get('cached') else ''}",
        f"{'cluster':>7} {'size':>7}  {'majority label':<20} {'purity':>6}  nearest the centre",
    ]
    for c in r["clusters"]:
        near = ", ".join(str(n["uri"] or n["id"]) for n in c["nearest"][:shown])
        label = c["majority_label"] or "-"
        lines.append(f"{c['cluster']:>7} {c['size']:>7}  {label:<20} {pct(c['purity']):>6}  {near}")
    return "\n".join(lines)


def cmd_clusters(args: argparse.Namespace, settings: Settings) -> int:
    params = params_from(args)
    try:
        try:
            db = store.open_store(settings)
        except store.StoreLocked as exc:
            record = hand_off(settings, args.name, params, str(exc))
        else:
            try:
                record = local(settings, db, args.name, params)
            finally:
                db.close()
    except (CliError, store.StoreError, store.UnknownCollection) as exc:
        print(f"dinoserve: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(public(record), indent=1))
    elif record["state"] == "done":
        print(table(record))
    if record["state"] != "done":
        print(f"dinoserve: error: clustering {record['state']}: {record['error']}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Any) -> None:
    """Register `clusters NAME` on the CLI's subparsers."""
    c = sub.add_parser("clusters", help="clusters of a collection's embeddings")
    c.add_argument("name", help="logical collection name")
    c.add_argument("--k", type=int, default=None, help="clusters (default: chosen in k-min..k-max)")
    c.add_argument("--k-min", type=int, default=2, help="automatic k: smallest tried (2)")
    c.add_argument("--k-max", type=int, default=20, help="automatic k: largest tried (20)")
    c.add_argument("--seed", type=int, default=0, help="seed of the fitting and the sample (0)")
    c.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="spectral (the neighbour graph), kmeans, or auto: spectral up to "
        "DINOSERVE_DISCOVERY__MINIBATCH_ABOVE points, MiniBatchKMeans above (auto)",
    )
    c.add_argument("--json", action="store_true", help="the job's record as JSON")
    c.set_defaults(func=cmd_clusters, reads_settings=True)
