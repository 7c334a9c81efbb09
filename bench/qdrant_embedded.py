"""Limits of the embedded Qdrant store (`QdrantClient(path=...)`, the service's default): upsert
throughput, search latency (k=10) and memory as the collection grows.

    .venv/bin/python bench/qdrant_embedded.py [--sizes 10000,50000,100000] [--dim 384]

Each size runs in a fresh subprocess on a fresh directory, so RSS is that size's alone: random
unit vectors (cosine) are upserted in batches, then single-vector queries are timed, then the
store is closed and reopened (the embedded store loads every point at open, so this is the
service's start-up cost). Prints a markdown table and one JSON line with the date, the CPU model
and the command. Baseline: the same process before any point is written (RSS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib(field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def measure(size: int, dim: int, batch: int, queries: int, k: int, seed: int) -> dict:
    """One size in this process: upsert, search, reopen. Returns the figures."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    rng = np.random.default_rng(seed)
    vectors = unit_vectors(rng, size, dim)  # (N, D), not timed
    probes = unit_vectors(rng, queries, dim)
    with tempfile.TemporaryDirectory(prefix="qdrant-bench-") as tmp:
        client = QdrantClient(path=tmp)
        client.create_collection(
            "bench", vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
        )
        rss_before = rss_mib()
        start = time.perf_counter()
        for lo in range(0, size, batch):
            hi = min(lo + batch, size)
            client.upsert(
                "bench",
                points=qm.Batch(ids=list(range(lo, hi)), vectors=vectors[lo:hi].tolist()),
            )
        upsert_s = time.perf_counter() - start
        lat = []
        for q in probes:
            t0 = time.perf_counter()
            hits = client.query_points("bench", query=q.tolist(), limit=k).points
            lat.append(time.perf_counter() - t0)
        assert len(hits) == k
        rss_loaded = rss_mib()
        client.close()
        del client
        t0 = time.perf_counter()
        reopened = QdrantClient(path=tmp)
        count = reopened.count("bench").count
        reopen_s = time.perf_counter() - t0
        reopened.close()
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    assert count == size
    ms = np.array(lat) * 1e3
    return {
        "points": size,
        "upsert_points_per_s": size / upsert_s,
        "upsert_s": upsert_s,
        "search_p50_ms": float(np.percentile(ms, 50)),
        "search_p99_ms": float(np.percentile(ms, 99)),
        "rss_before_mib": rss_before,
        "rss_loaded_mib": rss_loaded,
        "rss_peak_mib": rss_mib("VmHWM"),
        "reopen_s": reopen_s,
        "disk_mib": disk / 2**20,
    }


HEADER = (
    "| points | upsert points/s | search p50 ms | search p99 ms | RSS MiB (empty → loaded) "
    "| peak RSS MiB | reopen s | disk MiB |\n|---|---|---|---|---|---|---|---|"
)


def row_line(r: dict) -> str:
    return (
        f"| {r['points']:,} | {r['upsert_points_per_s']:,.0f} | {r['search_p50_ms']:.1f} "
        f"| {r['search_p99_ms']:.1f} | {r['rss_before_mib']:.0f} → {r['rss_loaded_mib']:.0f} "
        f"| {r['rss_peak_mib']:.0f} | {r['reopen_s']:.1f} | {r['disk_mib']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=1000, help="points per upsert call")
    ap.add_argument("--queries", type=int, default=200, help="timed searches per size")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()

    if args.one is not None:
        print(json.dumps(measure(args.one, args.dim, args.batch, args.queries, args.k, args.seed)))
        return

    from bench.train_knn_cpu import cpu_model  # imports torch: the parent only, never the child

    started = time.perf_counter()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        child = [sys.executable, __file__, "--one", str(size), "--dim", str(args.dim),
                 "--batch", str(args.batch), "--queries", str(args.queries), "--k", str(args.k),
                 "--seed", str(args.seed)]  # fmt: skip
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(row_line(rows[-1]), flush=True)

    print("\n" + HEADER)
    for r in rows:
        print(row_line(r))
    record = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "qdrant_client": importlib.metadata.version("qdrant-client"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
