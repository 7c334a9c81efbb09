"""`dinoserve eval knn|masks`: score a model package as DINO's evaluation scripts do.

Both print one JSON document on stdout (and a one-line summary on stderr, beside the progress
bars), so a script can keep the figures: `dinoserve eval knn … > knn.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.engine_choice import load_engine
from core.package import resolve
from core.settings import Settings


def _engine(args: argparse.Namespace, settings: Settings):
    return load_engine(
        resolve(settings.models_dir, args.model or settings.model),
        settings.engine,
        settings.inference,
    )


def _emit(result, out: str | None) -> int:
    doc = json.dumps(result.to_dict(), indent=2)
    if out:
        Path(out).write_text(doc + "\n")
    print(doc)
    print(result.summary(), file=sys.stderr)
    return 0


def _cmd_knn(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.knn import evaluate_knn

    result = evaluate_knn(
        _engine(args, settings),
        Path(args.train),
        Path(args.val),
        k=args.k,
        temperature=args.temperature,
        batch=args.batch,
    )
    return _emit(result, args.out)


def _cmd_masks(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.masks import evaluate_masks

    result = evaluate_masks(
        _engine(args, settings),
        Path(args.images),
        Path(args.masks),
        threshold=args.threshold,
        batch=args.batch,
        smooth=args.smooth,
    )
    return _emit(result, args.out)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`eval knn` and `eval masks` under the main parser."""
    ev = sub.add_parser("eval", help="score a model package: k-NN, attention masks")
    kinds = ev.add_subparsers(dest="eval_kind", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None, help="name or package path (default DINOSERVE_MODEL)"
        )
        p.add_argument("--batch", type=int, default=64, help="images per engine call")
        p.add_argument("--out", default=None, help="also write the JSON to this file")

    k = kinds.add_parser("knn", help="weighted k-NN top-1/top-5 on labelled folders (eval_knn)")
    k.add_argument("--train", required=True, help="labelled memory: class folders (dir or tar)")
    k.add_argument("--val", required=True, help="labelled queries: class folders (dir or tar)")
    k.add_argument("--k", type=int, default=20, help="neighbours that vote (20)")
    k.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (0.07)")
    common(k)
    k.set_defaults(func=_cmd_knn, reads_settings=True)

    m = kinds.add_parser("masks", help="Jaccard of the attention masks against true masks")
    m.add_argument("--images", required=True, help="folder of images")
    m.add_argument("--masks", required=True, help="folder of masks, same relative names")
    m.add_argument("--threshold", type=float, default=0.6, help="attention mass kept (0.6)")
    m.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="S",
        help="score the map smoothed by a Gaussian of σ = S cells, as `export --views "
        "…,smooth=S` would serve it (for a package that does not smooth its map)",
    )
    common(m)
    m.set_defaults(func=_cmd_masks, reads_settings=True)
