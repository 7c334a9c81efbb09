"""`dinoserve duplicates NAME`: groups of near-duplicate images of a collection, largest first
(discovery/duplicates.py), with a progress bar while it scans.

It opens the store itself. When a running service owns the embedded store (one process may
open it), it asks that service instead (GET /collections/NAME/duplicates, with
DINOSERVE_API_KEY or the admin key): the same groups, computed there, without stopping it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from core import store
from core.settings import Settings
from dinoserve.models_cli import CliError, Service
from discovery.duplicates import find_duplicates


def local(settings: Settings, name: str, threshold: float, limit: int) -> dict[str, Any]:
    """The groups, computed in this process (raises StoreLocked while a service owns it)."""
    db = store.open_store(settings)
    try:
        physical = db.resolve(store.check_name(name))
        with tqdm(unit="img", desc=f"duplicates {name}", disable=None) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            found = find_duplicates(
                db, physical, threshold, settings.discovery.duplicate_k, progress=progress
            )
    finally:
        db.close()
    return {"collection": name, "physical_collection": physical, **found.page(0, limit)}


def remote(settings: Settings, name: str, threshold: float, limit: int, locked: str) -> dict:
    """The groups from the service that owns the store.

    Raises:
        CliError: no service answers, or it refused.
    """
    key = settings.api_key or settings.admin_api_key or settings.write_api_key
    svc = Service(settings, key, key_var="DINOSERVE_API_KEY", key_name="API key")
    path = f"/collections/{name}/duplicates"
    body = svc.call("GET", path, threshold=str(threshold), limit=str(max(1, min(limit, 500))))
    if body is None:
        raise CliError(
            f"{locked}, and no service answers at {svc.base}: set DINOSERVE_SERVE__HOST and "
            "DINOSERVE_SERVE__PORT to its address, or stop the process that holds the store"
        )
    print(f"the service at {svc.base} owns the store: it computed the groups", file=sys.stderr)
    return body


def print_groups(body: dict[str, Any]) -> None:
    print(
        f"{body['collection']}: {body['total_groups']} groups of near-duplicates "
        f"({body['duplicated']} of {body['points']} images) at similarity ≥ {body['threshold']}"
    )
    for n, g in enumerate(body["groups"], 1):
        print(f"group {n}: {g['size']} images, min similarity {g['min_similarity']:.3f}")
        for m in g["members"]:
            label = f"  [{m['label']}]" if m["label"] else ""
            print(f"  {m['similarity']:.3f}  {m['uri'] or m['id']}{label}")
    if len(body["groups"]) < body["total_groups"]:
        print(f"… {body['total_groups'] - len(body['groups'])} more groups (--limit)")


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    threshold = args.threshold or settings.discovery.duplicate_threshold
    if not 0 < threshold <= 1:
        print(f"dinoserve: error: --threshold must be in (0, 1], got {threshold}", file=sys.stderr)
        return 2
    try:
        try:
            body = local(settings, args.name, threshold, args.limit)
        except store.StoreLocked as exc:
            body = remote(settings, args.name, threshold, args.limit, str(exc))
    except (CliError, store.StoreError, store.UnknownCollection) as exc:
        print(f"dinoserve: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(body, sys.stdout, indent=1)
        print()
    else:
        print_groups(body)
    return 0


def add_parsers(sub: Any) -> None:
    """Register `duplicates NAME` on the CLI's subparsers."""
    d = sub.add_parser("duplicates", help="groups of near-duplicate images in a collection")
    d.add_argument("name", help="logical collection name")
    d.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="least cosine similarity (default DINOSERVE_DISCOVERY__DUPLICATE_THRESHOLD)",
    )
    d.add_argument("--limit", type=int, default=20, help="groups shown, largest first (20)")
    d.add_argument("--json", action="store_true", help="the groups as JSON (the HTTP answer)")
    d.set_defaults(func=cmd_duplicates, reads_settings=True)
