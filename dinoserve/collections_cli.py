"""`dinoserve collections list` and `dinoserve collections delete NAME`: what is indexed, and a
way to remove it (a collection indexed by mistake, an experiment).

Both open the store directly. The embedded store admits one process: while a service runs on it,
they say so in one line (stop the service, or point them at a Qdrant server).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core import store
from core.settings import Settings


@contextmanager
def _store(settings: Settings) -> Iterator[store.Store]:
    try:
        db = store.open_store(settings)
    except store.StoreLocked as exc:
        raise store.StoreLocked(f"{exc}; stop it and run the command again") from exc
    try:
        yield db
    finally:
        db.close()


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as db:
        rows = db.listing()
    if not rows:
        print("no collections (dinoserve index FOLDER --collection NAME makes one)")
        return 0
    print(f"{'collection':<24} {'points':>8}  {'model version':<28} physical")
    for r in rows:
        name = r["alias"] or f"({r['name']}: kept, not served)"
        print(f"{name:<24} {r['points']:>8}  {r['model_version'] or '-':<28} {r['physical']}")
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as db:
        deleted = db.delete_logical(args.name)
    print(f"deleted collection {args.name!r}: {', '.join(deleted) or 'its alias only'}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `collections list|delete` on the CLI's subparsers."""
    c = sub.add_parser("collections", help="list or delete indexed collections")
    csub = c.add_subparsers(dest="collections_command", required=True)
    csub.add_parser("list", help="collections, points and model versions").set_defaults(
        func=_guarded(cmd_list), reads_settings=True
    )
    d = csub.add_parser("delete", help="delete a collection (every model version of it)")
    d.add_argument("name", help="logical collection name, as listed")
    d.set_defaults(func=_guarded(cmd_delete), reads_settings=True)


def _guarded(func: Any) -> Any:
    """Refusals become one line on stderr and exit status 2, as the other commands do."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except (store.StoreError, store.UnknownCollection) as exc:
            print(f"dinoserve: error: {exc}", file=sys.stderr)
            return 2

    return run
