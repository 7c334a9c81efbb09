"""Writes to a collection over HTTP: single-image adds per second at 1, 8 and 32 clients.

    .venv/bin/python -m bench.collections_write [--model tiny|vits16|PACKAGE] [--seconds 12]

Packages a model (random init: speed only), indexes a labelled synthetic collection into an
embedded Qdrant, starts a real `dinoserve serve` on loopback and drives, with N concurrent
clients (httpx, closed loops), `POST /collections/bench/images?label=…` with one image per
request, every one a new image (a distinct PNG: an add of bytes already there is not
re-embedded and would measure nothing). The baseline, in the same run against the same service,
is `POST /embed` of one such image: the same HTTP, decoding and engine path without the store.
Adds run against two services side by side, DINOSERVE_BLOB_FSYNC on (the default: each upload's
bytes are flushed to disk before its point is written) and off. Rounds alternate between the
cells; a cell's req/s is the median. adds ÷ embeds near 1 means the store side (id lookup, blob
write, upsert) is not the bottleneck, the engine is.

Also times the store side alone in this process (one thread, no engine), with and without the
fsync: what limits the adds when it is not the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.api_load import (
    MODEL_HELP,
    closed_loops,
    free_port,
    model_arg,
    prepare_service,
    start_server,
    summarize,
)
from bench.train_knn_cpu import cpu_model

MODES = ("fsync", "no-fsync")  # DINOSERVE_BLOB_FSYNC true / false


def distinct_pngs(n: int, size: int = 64, seed: int = 0) -> list[bytes]:
    """`n` (< 2**24) different small PNGs: a noise image, its first pixel numbering the copy."""
    base = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        arr = base.copy()
        arr[0, 0] = (i & 255, (i >> 8) & 255, (i >> 16) & 255)  # the copy's number, 24 bits
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def store_alone(images: list[bytes], dim: int, n: int, fsync: bool) -> dict:
    """Points/s of the store side of an add (api/writes.py: id lookup, blob write, upsert), one
    thread, no engine."""
    from api.writes import NewImage, Writer
    from core.blobs import Blobs
    from core.store import Layout
    from core.store.edge import EdgeStore

    work = Path(tempfile.mkdtemp(prefix="collections-store-"))
    db = EdgeStore(work / "q", Layout())
    try:
        physical = db.ensure_collection("c", "v", dim)
        writer = Writer(db, Blobs(work / "blobs", fsync))
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((n, dim)).astype(np.float32)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            img = NewImage(images[i], f"c{i % 10}")
            t = time.perf_counter()
            writer.unchanged(physical, [img])
            writer.keep_bytes([img])
            writer.add(physical, [(img, (64, 64))], vecs[i : i + 1], [], "v")
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    finally:
        db.close()
        shutil.rmtree(work, ignore_errors=True)
    ms = np.asarray(lat) * 1000
    return {
        "points": n,
        "points_per_s": round(n / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=model_arg, default="tiny", help=MODEL_HELP)
    ap.add_argument("--seconds", type=float, default=12.0, help="per cell and endpoint")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (median)")
    ap.add_argument("--images", type=int, default=10, help="indexed images per class")
    ap.add_argument("--pool", type=int, default=20000, help="distinct images to upload")
    args = ap.parse_args(argv)
    data, env = prepare_service(args.model, "fp32", args.images, "bench", "collections-write-")
    work = data.parent
    env["DINOSERVE_BLOB_DIR"] = str(work / "blobs")
    try:
        return measure(args, env, work, argv)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace, env: dict[str, str], work: Path, argv: list[str] | None
) -> dict:
    images = distinct_pngs(args.pool)
    fresh = itertools.cycle(images)  # the pool is sized not to wrap in a normal run
    from core.package import read_meta

    dim = read_meta(Path(env["DINOSERVE_MODEL"])).embed_dim
    n_alone = min(300, args.pool)
    alone = {mode: store_alone(images, dim, n_alone, mode == "fsync") for mode in MODES}
    print(json.dumps({"store_alone": alone}), flush=True)
    # One service per DINOSERVE_BLOB_FSYNC value, side by side (each its own store copy: the
    # embedded store admits one process); rounds alternate between the cells.
    urls, procs = {}, []
    sent = 0
    try:
        for mode in MODES:
            port = free_port()
            store = f"{env['DINOSERVE_QDRANT_PATH']}-{mode}"
            subprocess.run(
                ["cp", "-a", "--sparse=always", env["DINOSERVE_QDRANT_PATH"], store], check=True
            )
            mode_env = env | {
                "DINOSERVE_QDRANT_PATH": store,
                "DINOSERVE_BLOB_DIR": str(work / f"blobs-{mode}"),
                "DINOSERVE_BLOB_FSYNC": str(mode == "fsync").lower(),
            }
            procs.append(start_server(mode_env, port, work / f"server-{mode}.log"))
            urls[mode] = f"http://127.0.0.1:{port}"

        def add(c):
            nonlocal sent
            sent += 1
            files = {"image": ("x.png", next(fresh), "image/png")}
            params = {"label": f"c{sent % 10}"}
            return c.post("/collections/bench/images", params=params, files=files)

        def embed(c):
            return c.post("/embed", files={"images": ("x.png", next(fresh), "image/png")})

        cells = {
            "embed": (urls["fsync"], embed),
            "add": (urls["fsync"], add),
            "add_no_fsync": (urls["no-fsync"], add),
        }
        rows = []
        for url, send in cells.values():  # warm-up
            asyncio.run(closed_loops(url, send, 4, min(2.0, args.seconds)))
        for clients in [int(c) for c in args.clients.split(",")]:
            runs: dict[str, list[dict]] = {name: [] for name in cells}
            for _ in range(args.rounds):
                for name, (url, send) in cells.items():
                    seconds = args.seconds / args.rounds
                    runs[name].append(asyncio.run(closed_loops(url, send, clients, seconds)))
            row: dict = {"clients": clients} | {n: summarize(r) for n, r in runs.items()}
            base = row["embed"]["req_per_s"]
            for name in ("add", "add_no_fsync"):
                row[f"{name}_vs_embed"] = round(row[name]["req_per_s"] / base, 2) if base else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": "python -m bench.collections_write "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "uploads": sent,
        "store_alone": alone,
        "rows": rows,
    }
    print(json.dumps(report))
    for mode, a in alone.items():
        print(
            f"store side alone ({mode}): {a['points_per_s']} adds/s, p50 {a['p50_ms']} ms, "
            f"p99 {a['p99_ms']} ms (one thread, no engine)"
        )
    print(
        "| clients | /embed req/s (p50/p99 ms) | adds/s, fsync (p50/p99 ms) | ÷ embed "
        "| adds/s, no fsync (p50/p99 ms) | ÷ embed | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e, a, n = r["embed"], r["add"], r["add_no_fsync"]
        cells_md = [
            r["clients"],
            f"{e['req_per_s']} ({e['p50_ms']}/{e['p99_ms']})",
            f"{a['req_per_s']} ({a['p50_ms']}/{a['p99_ms']})",
            r["add_vs_embed"],
            f"{n['req_per_s']} ({n['p50_ms']}/{n['p99_ms']})",
            r["add_no_fsync_vs_embed"],
            e["errors"] + a["errors"] + n["errors"],
        ]
        print("| " + " | ".join(str(c) for c in cells_md) + " |")
    return report


if __name__ == "__main__":
    main()
