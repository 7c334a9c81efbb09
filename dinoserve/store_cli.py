"""`dinoserve store info|export`: what the store holds, and moving the embedded store to a
Qdrant server or cluster without re-embedding.

`export --to URL` copies every collection (ids, vectors, payloads) and alias of the embedded
store to the server; it skips what the server already holds, so it can be run again after an
interruption, and again later to bring over what was indexed since. Then set
DINOSERVE_QDRANT_URL to the server. (A local-mode directory of the previous version is migrated
to Qdrant Edge the first time any command opens it.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from core import store
from core.settings import Settings
from core.store.migrate import copy_store
from core.store.server import ServerStore


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    db = store.open_store(settings)
    try:
        where = settings.qdrant_url or f"embedded (Qdrant Edge) at {settings.qdrant_path}"
        print(f"store: {where}")
        aliases = db.aliases()
        by_physical = {p: a for a, p in aliases.items()}
        for name in db.collections():
            alias = f"  ← {by_physical[name]}" if name in by_physical else ""
            print(f"  {name}: {db.count(name)} points, {db.dim(name)}-d{alias}")
        if not aliases:
            print("  (no collections)")
    finally:
        db.close()
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    if settings.qdrant_url:
        print(
            "dinoserve: error: DINOSERVE_QDRANT_URL is set: the store already is a server; "
            "export copies the embedded store (unset it)",
            file=sys.stderr,
        )
        return 2
    src = store.open_store(settings)
    dst = ServerStore.connect(
        args.to,
        args.api_key or settings.qdrant_api_key,
        store.layout_from(settings),
        settings.qdrant.timeout_s,
    )
    bars: dict[str, Any] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, unit="pt", desc=name))
        bar.update(done - bar.n)

    try:
        report = copy_store(src, dst, page=args.page, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
        src.close()
        dst.close()
    print(report.summary())
    print(f"done: set DINOSERVE_QDRANT_URL={args.to} to use the server")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `store info|export` on the CLI's subparsers."""
    s = sub.add_parser("store", help="the vector store: info, export to a Qdrant server")
    ssub = s.add_subparsers(dest="store_command", required=True)
    i = ssub.add_parser("info", help="collections, aliases and point counts")
    i.set_defaults(func=_guarded(cmd_info), reads_settings=True)
    e = ssub.add_parser("export", help="copy the embedded store to a Qdrant server (resumable)")
    e.add_argument("--to", required=True, help="the server's URL, e.g. http://qdrant:6333")
    e.add_argument("--api-key", default=None, help="default: DINOSERVE_QDRANT_API_KEY")
    e.add_argument("--page", type=int, default=512, help="points per read and write")
    e.set_defaults(func=_guarded(cmd_export), reads_settings=True)


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except store.StoreError as exc:
            print(f"dinoserve: error: {exc}", file=sys.stderr)
            return 2

    return run
