"""The embedded store at scale, side by side in one run: qdrant-client's local mode (the
embedded store before Qdrant Edge), Qdrant Edge as configured before issue 29 (`edge-before`:
one in-process index build over every point at the end) and Qdrant Edge now (`edge`: a segment
indexed every DINOSERVE_QDRANT__SEGMENT_POINTS written, each large build in a child process).

    .venv/bin/python -m bench.store_scale [--sizes 10000,100000,1000000] [--local-max 100000]
        [--backends local,edge-before,edge]

Data: 384-d unit vectors like image embeddings: 2,000 cluster centres, each point its centre plus
noise (cosine ≈ 0.7 to the centre), label payload `c0`…`c9` by cluster (10 % each) but for one
cluster in a hundred, `rare` (1 %); queries are new points of the same clusters. Each (backend,
size) runs in a fresh subprocess on a fresh directory, so its memory is its own. Measured:
upsert points/s (batches of 1,000; local mode: 256; for `edge` this includes the segment builds
on the way), the time `Store.optimize` takes at the end, the indexing peak (this process's
VmHWM, or this process and its index builder together, sampled every 0.1 s, whichever is
higher), search p50/p99 at k=10 without a filter and with a 10 % and a 1 % label filter (the
10 % one also at ef 1024), recall@10 against exact search (ground truth computed in the parent
by brute force), RSS after loading (reopen + queries), reopen time (twice), and disk use.
Prints a markdown table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DIM, CENTRES, CHUNK = 384, 2000, 10_000


def rss_mib(field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _centres(seed: int) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((CENTRES, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def chunks(n: int, seed: int, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(offset, vectors (m, D), cluster ids (m,)) for points start…n, deterministic per chunk."""
    centres = _centres(seed)
    for lo in range(start, n, CHUNK):
        rng = np.random.default_rng([seed, lo])
        m = min(CHUNK, n - lo)
        cl = rng.integers(0, CENTRES, m)
        noise = rng.standard_normal((m, DIM), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        v = centres[cl] + noise  # cosine to the centre ≈ 0.7
        yield lo, v / np.linalg.norm(v, axis=1, keepdims=True), cl


def queries(q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """New points of the same clusters (offset far past any collection)."""
    _, v, cl = next(chunks(10**9 + q, seed, start=10**9))
    return v[:q], cl[:q]


# The filtered searches: a label that holds 10 % of the points and one that holds 1 %.
FILTERS = {"filtered": "c0", "rare": "rare", "filtered@1024": "c0"}  # the last at ef 1024


def label_of(cluster: np.ndarray) -> np.ndarray:
    """`c0`…`c9` by cluster (10 % each), except one cluster in a hundred: `rare` (1 %; taken
    from c9, which holds 9 %)."""
    out = np.array([f"c{c % 10}" for c in cluster.tolist()], dtype=object)
    out[cluster % 100 == 99] = "rare"
    return out


def ground_truth(n: int, qv: np.ndarray, k: int, seed: int) -> dict[str, list]:
    """Exact top-k indices by cosine, without and with each label filter."""
    best = {
        m: (np.full((len(qv), k), -np.inf, np.float32), np.zeros((len(qv), k), np.int64))
        for m in ("plain", *FILTERS)
    }
    for lo, v, cl in chunks(n, seed):
        s = qv @ v.T  # (Q, m)
        labels = label_of(cl)
        for mode, (bs, bi) in best.items():
            mask = None if mode == "plain" else labels == FILTERS[mode]
            ss = s if mask is None else np.where(mask[None, :], s, -np.inf)
            allv = np.concatenate([bs, ss], 1)
            alli = np.concatenate([bi, np.broadcast_to(np.arange(lo, lo + len(v)), ss.shape)], 1)
            top = np.argsort(-allv, 1)[:, :k]
            bs[:] = np.take_along_axis(allv, top, 1)
            bi[:] = np.take_along_axis(alli, top, 1)
    return {mode: bi.tolist() for mode, (_, bi) in best.items()}


# -- one (backend, size) in a child process ---------------------------------------------------
BACKENDS = ("local", "edge-before", "edge")


def _legacy_config(spec):
    """The Edge configuration before issue 29 (the baseline): vectors in RAM while the
    collection fills, one build of every point at the end, in this process; at that build a
    large collection moves its vectors to disk (mapped and pre-warmed) with an int8 copy."""
    import qdrant_edge as qe

    hnsw = qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    if not spec.large:
        vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw)
    quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine, on_disk=True)
    return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw, quantization_config=quant)


def _open(backend: str, path: Path):
    from qdrant_client import QdrantClient

    from core.store import Layout
    from core.store.edge import EdgeStore
    from core.store.server import ServerStore

    if backend == "edge":
        return EdgeStore(path, Layout())
    if backend == "edge-before":
        import core.store.edge

        core.store.edge.edge_config = _legacy_config
        return EdgeStore(path, Layout(segment_points=10**12, build_apart_above=10**12))
    return ServerStore(QdrantClient(path=str(path)), str(path), Layout())


class TreeSampler:
    """Samples the resident memory of this process plus its children (the index builders)
    every 0.1 s, from a thread: builds run in a child, so this thread gets the GIL meanwhile.
    An in-process build holds the GIL and stops the sampling: `VmHWM` covers that case."""

    def __init__(self) -> None:
        import os
        import threading

        self.peak, self._pid, self._stop = 0.0, os.getpid(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from core.store.edge_build import status_mib

        children = Path(f"/proc/{self._pid}/task/{self._pid}/children")
        while not self._stop.wait(0.1):
            try:
                kids = [int(x) for x in children.read_text().split()]
            except OSError:
                kids = []
            rss = sum(status_mib(p, "VmRSS") for p in (self._pid, *kids))
            self.peak = max(self.peak, rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _children_peak_mib() -> float:
    """The largest peak RSS of this process's finished children (the index builders)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def child(backend: str, n: int, q: int, k: int, seed: int, path: Path) -> dict:
    import warnings

    from core.store import Match

    warnings.simplefilter("ignore")  # local mode: "search_params have no effect", per query
    db = _open(backend, path)
    physical = db.create_physical("bench__v1", DIM)
    sampler = TreeSampler()
    batch = 256 if backend == "local" else 1000
    t0 = time.perf_counter()
    for lo, v, cl in chunks(n, seed):
        labels = label_of(cl)
        for b in range(0, len(v), batch):
            sl = slice(b, b + batch)
            pids = [_pid(lo + b + j) for j in range(len(v[sl]))]
            payloads = [
                {"label": str(x), "uri": f"img{lo + b + j}"} for j, x in enumerate(labels[sl])
            ]
            db.upsert(physical, pids, v[sl], payloads)  # Edge: may index a segment on the way
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if backend != "local":
        db.optimize(physical)
    index_s = time.perf_counter() - t0
    # The indexing run's peak: this process's high-water mark, or this process and its index
    # builder together as sampled, whichever is higher.
    own_peak, builder_peak, tree_peak = rss_mib("VmHWM"), _children_peak_mib(), sampler.stop()
    db.close()
    t0 = time.perf_counter()
    db = _open(backend, path)
    db.count(physical)  # the first call loads the collection (Edge opens shards lazily)
    reopen_s = time.perf_counter() - t0
    qv, _ = queries(q, seed)
    out: dict = {"backend": backend, "points": n, "upsert_s": upsert_s}
    out.update(upsert_per_s=n / upsert_s, index_s=index_s, reopen_s=reopen_s)
    out.update(own_peak_mib=own_peak, builder_peak_mib=builder_peak)
    out["index_peak_mib"] = max(own_peak, tree_peak)
    modes = {"plain": Match(), **{m: Match(label=label) for m, label in FILTERS.items()}}
    for mode, match in modes.items():
        if mode == "filtered@1024":
            import dataclasses

            db.layout = dataclasses.replace(db.layout, filtered_hnsw_ef=1024)
        lat, found = [], []
        for vec in qv:
            t = time.perf_counter()
            hits = db.search(physical, vec, k, match, ())
            lat.append(time.perf_counter() - t)
            found.append([int(h.id.split("-")[-1], 16) for h in hits])
        out[mode] = {
            "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "found": found,
        }
    out["rss_loaded_mib"] = rss_mib()
    db.close()
    t0 = time.perf_counter()  # again: what the first reopen paid once (a cold page cache, say)
    db = _open(backend, path)
    db.count(physical)
    out["reopen_again_s"] = time.perf_counter() - t0
    db.close()
    out["disk_mib"] = _du(path) / 2**20
    return out


def _pid(i: int) -> str:
    """A UUID that carries the point's index in its last group (to score recall)."""
    return f"00000000-0000-4000-8000-{i:012x}"


def _du(path: Path) -> int:
    """Bytes actually allocated (Edge's files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / sum(len(t) for t in truth)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--local-max", type=int, default=100_000, help="largest size for local mode")
    p.add_argument("--backends", default=",".join(BACKENDS), help="of " + ", ".join(BACKENDS))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--child", nargs=3, metavar=("BACKEND", "N", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        backend, n, d = a.child
        print(json.dumps(child(backend, int(n), a.queries, a.k, a.seed, Path(d))))
        return 0
    sizes = [int(s) for s in a.sizes.split(",")]
    qv, _ = queries(a.queries, a.seed)
    rows = []
    for n in sizes:
        truth = ground_truth(n, qv, a.k, a.seed)
        for backend in a.backends.split(","):
            if backend == "local" and n > a.local_max:
                continue
            with tempfile.TemporaryDirectory(prefix="store-scale-") as tmp:
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.store_scale",
                    "--queries",
                    str(a.queries),
                    "--k",
                    str(a.k),
                    "--seed",
                    str(a.seed),
                    "--child",
                    backend,
                    str(n),
                    str(Path(tmp) / "store"),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            for mode in ("plain", *FILTERS):
                r[mode]["recall"] = recall(r[mode].pop("found"), truth[mode])
            rows.append(r)
            print(_row(r), flush=True)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "command": shlex.join([sys.executable, "-m", "bench.store_scale", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    print(table(rows))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


HEADER = (
    "| backend | points | upsert pts/s | index s | indexing peak MiB (own, builder) | "
    "p50 / p99 ms | recall@10 | 10 % label: p50 / p99 ms, recall | 1 % label: p50 / p99 ms, "
    "recall | 10 % label at ef 1024 | RSS loaded MiB | reopen s (again) | disk MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _row(r: dict) -> str:
    pl, fl, ra, f2 = r["plain"], r["filtered"], r["rare"], r["filtered@1024"]
    nan = float("nan")
    return (
        f"| {r['backend']} | {r['points']:,} | {r['upsert_per_s']:,.0f} | {r['index_s']:.1f} | "
        f"{r['index_peak_mib']:,.0f} ({r['own_peak_mib']:,.0f}, {r['builder_peak_mib']:,.0f}) | "
        f"{pl['p50_ms']:.1f} / {pl['p99_ms']:.1f} | {pl.get('recall', nan):.3f} | "
        f"{fl['p50_ms']:.1f} / {fl['p99_ms']:.1f}, {fl.get('recall', nan):.3f} | "
        f"{ra['p50_ms']:.1f} / {ra['p99_ms']:.1f}, {ra.get('recall', nan):.3f} | "
        f"{f2['p50_ms']:.1f} / {f2['p99_ms']:.1f}, {f2.get('recall', nan):.3f} | "
        f"{r['rss_loaded_mib']:.0f} | {r['reopen_s']:.2f} ({r['reopen_again_s']:.2f}) | "
        f"{r['disk_mib']:.0f} |"
    )


def table(rows: list[dict]) -> str:
    return "\n".join([HEADER, *(_row(r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
