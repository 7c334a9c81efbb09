"""Clusters (issue 20): quality on a CIFAR-10 sample, and time and memory at 100k points.

    .venv/bin/python -m bench.cluster_quality --tar ../shared/data/cifar10-train.tar.gz \\
        [--per-class 500] [--epochs 4] [--package DIR ...] [--points 100000]

Quality: the first `--per-class` images of each class are indexed (with their labels) into
Qdrant Edge by each model package, clustered by discovery/clusters.py at k = 10 (seed 0), and
scored against the true classes (NMI, purity). The packages: the tiny CPU preset trained
`--epochs` epochs on the same sample (`dinoserve train` + `dinoserve export`'s functions;
0 skips it), the same architecture at random initialisation (the baseline), and any `--package`
(e.g. the shipped default backbone, where one exists).

Time and memory: `--points` synthetic 384-d vectors (store_scale's clustered vectors) in an
Edge store, clustered at k = 20 the way the service does by default (`auto`: spectral on the
neighbour graph up to DINOSERVE_DISCOVERY__MINIBATCH_ABOVE = 20,000 points, MiniBatchKMeans
above), against full KMeans (n_init 4) on the same vectors as the baseline; each in
a child process of its own: peak RSS is the process's high-water mark from just before reading
the vectors (reset through /proc/self/clear_refs), beside its RSS then (imports, open store).
One BLAS thread, as the service.

Prints one JSON line per measurement and writes them all to OUT/cluster_quality.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample(tar: Path, out: Path, per_class: int) -> Path:
    """The first `per_class` images of each class folder of the archive, under out/<class>/."""
    counts: dict[str, int] = {}
    with tarfile.open(tar) as t:
        for m in t:
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".jpg") or len(parts) < 2:
                continue
            label = parts[-2]
            if counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            dst = out / label / parts[-1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(t.extractfile(m).read())
    return out


def trained_package(data: Path, work: Path, epochs: int) -> Path:
    """The tiny preset trained `epochs` epochs on `data`, exported as a package."""
    from training.config import load_config
    from training.export import export_run
    from training.train import train

    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.train={data}",
            f"data.cache_dir={work / 'cache'}",
            f"optim.epochs={epochs}",
            "data.holdout_per_class=0",
            "eval.at_start=false",
            f"eval.every_epochs={epochs + 1}",
            "run.threads=1",
            "data.num_workers=1",
            "run.tensorboard=false",
        ],
    )
    result = train(cfg, work / "run")
    print(f"trained {result.steps} steps, {result.images_per_s:.0f} img/s", file=sys.stderr)
    return export_run(work / "run", work / "models", "tiny-cifar")


def quality(
    package: Path,
    data: Path,
    work: Path,
    name: str,
    seeds: tuple[int, ...] = (0,),
    methods: tuple[str, ...] = ("auto",),
) -> dict:
    """Index `data` with `package`, cluster at k = 10, score against the folders' labels.

    Each of `seeds` is one k-means seed; `nmi` and `purity` are the first's. Where the points
    form no compact groups, k-means finds partitions of nearly equal inertia that disagree, and
    one seed is a draw: `nmi_seeds` shows the spread. With several `methods` (discovery/clusters.py:
    auto, spectral, kmeans), the first is reported as above and each under `by_method`.
    """
    from core.engine_choice import load_engine
    from core.settings import InferenceSettings
    from core.store import Layout
    from core.store.edge import EdgeStore
    from discovery.clusters import ClusterParams, cluster, read_embeddings
    from indexer.ingest import IngestOptions
    from indexer.pipeline import Indexer
    from indexer.sources import list_source

    engine = load_engine(package, "onnxruntime", InferenceSettings(intra_op_threads=1))
    db = EdgeStore(work / f"qdrant-{name}", Layout())
    try:
        Indexer(db, engine, "cifar", IngestOptions(batch=64, workers=1)).run(
            list_source(data, "dirs"), progress=False
        )
        t0 = time.perf_counter()
        emb = read_embeddings(db, db.resolve("cifar"))
        by_method: dict[str, dict] = {}
        for method in methods:
            t1 = time.perf_counter()
            runs = [cluster(emb, ClusterParams(k=10, seed=s, method=method)) for s in seeds]
            by_method[method] = {
                "algorithm": runs[0]["algorithm"],
                "nmi_seeds": [round(o["nmi"], 4) for o in runs],
                "purity_seeds": [round(o["purity"], 4) for o in runs],
                "seconds": round((time.perf_counter() - t1) / len(seeds), 2),
            }
            if method == methods[0]:
                outs = runs
        out = outs[0]
        seconds = (time.perf_counter() - t0) / (len(seeds) * len(methods))
    finally:
        db.close()
    return {
        "what": "quality",
        "model": name,
        "package": str(package),
        "provenance": engine.meta.provenance.get("source") if engine.meta.provenance else None,
        "points": out["points"],
        "k": 10,
        "nmi": round(out["nmi"], 4),
        "purity": round(out["purity"], 4),
        "nmi_seeds": [round(o["nmi"], 4) for o in outs],
        "by_method": by_method,
        "cluster_seconds": round(seconds, 2),
    }


def timing(points: int, work: Path, algorithm: str) -> dict:
    """(In a child process.) Read and cluster `points` synthetic vectors at k = 20."""
    from threadpoolctl import threadpool_limits

    from bench.store_scale import chunks
    from core.store import Layout, point_id
    from core.store.edge import EdgeStore
    from discovery.clusters import ClusterParams, Tuning, cluster, read_embeddings

    path = work / "qdrant-timing"
    db = EdgeStore(path, Layout())
    try:
        if algorithm == "fill":  # a child of its own: the others' peak RSS is theirs alone
            physical = db.ensure_collection("synth", "bench", 384)
            for lo, vecs, _ in chunks(points, seed=0):
                uris = [f"/synth/{lo + j}" for j in range(len(vecs))]
                db.upsert(
                    physical,
                    [point_id(u) for u in uris],
                    vecs,
                    [{"uri": u, "sha256": u} for u in uris],
                )
            db.point_alias("synth", physical)
            db.optimize(physical)
            return {"what": "fill", "points": db.count(physical)}
        rss0 = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := RSS now
        # auto: what the service runs (spectral up to 20,000 points, MiniBatchKMeans above);
        # kmeans: full KMeans at any size, the baseline.
        auto = algorithm == "auto"
        tuning = Tuning(minibatch_above=20_000 if auto else 10**9)
        params = ClusterParams(k=20, seed=0, method="auto" if auto else "kmeans")
        with threadpool_limits(1):
            t0 = time.perf_counter()
            emb = read_embeddings(db, db.resolve("synth"))
            t1 = time.perf_counter()
            out = cluster(emb, params, tuning)
            t2 = time.perf_counter()
    finally:
        db.close()
    return {
        "what": "timing",
        "algorithm": out["algorithm"],
        "points": out["points"],
        "k": 20,
        "read_s": round(t1 - t0, 2),
        "cluster_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "rss_before_mib": rss0,
        "peak_rss_mib": _status_mib("VmHWM"),
    }


def _status_mib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    raise KeyError(field)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tar", type=Path, default=ROOT.parent / "shared/data/cifar10-train.tar.gz")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=4, help="training of the tiny preset; 0: none")
    ap.add_argument("--package", type=Path, action="append", default=[], help="more packages")
    ap.add_argument("--points", type=int, default=100_000, help="timing; 0 skips it")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-clusters"))
    ap.add_argument("--child", choices=("fill", "auto", "kmeans"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(timing(args.points, args.work, args.child)))
        return

    from bench.embed_throughput import random_package
    from bench.store_scale import cpu_model

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = [{"what": "machine", "cpu": cpu_model(), "argv": sys.argv[1:]}]
    with tempfile.TemporaryDirectory(prefix="bench-clusters-") as tmp:
        work = Path(tmp)
        if args.points:
            for algorithm in ("fill", "auto", "kmeans"):
                child = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.cluster_quality",
                        "--child",
                        algorithm,
                        "--points",
                        str(args.points),
                        "--work",
                        str(work),
                    ],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
                if algorithm == "fill":
                    rows.pop()
        if args.per_class:
            data = sample(args.tar, work / "sample", args.per_class)
            packages = [(p.name, p) for p in args.package]
            _, random_dir = random_package("tiny", work / "models", None, "random init (bench)")
            packages.append(("tiny, random init", random_dir))
            if args.epochs:
                t0 = time.perf_counter()
                trained = trained_package(data, work, args.epochs)
                rows.append(
                    {
                        "what": "training",
                        "epochs": args.epochs,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                packages.append((f"tiny, trained {args.epochs} epochs on the sample", trained))
            for i, (name, pkg) in enumerate(packages):
                rows.append(quality(pkg, data, work, f"m{i}") | {"model": name})
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "cluster_quality.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
