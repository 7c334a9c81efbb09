"""The Qdrant Edge configuration of one collection (shard), shared by the store and by the
child process that builds a large shard's index (`core.store.edge_build`).

Two forms, by size (`Layout.quantize_above`, checked when an index is built):
- small: vectors in RAM, HNSW m 16 / ef_construct 100;
- large: vectors memory-mapped on disk, not pre-warmed (`Memory.Cold`: the page cache keeps
  what searches touch), an int8 copy pinned in RAM (searches run on it and rescore the best
  candidates with the full vectors), and segments of at most `Layout.segment_mib`, so the
  optimiser builds and writes one bounded segment at a time instead of one graph over every
  point. The choices and their measurements: bench/RESULTS.md, "store at a million".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import qdrant_edge as qe

HNSW_M, EF_CONSTRUCT = 16, 100
# Below this many KB of vectors matching a filter, Qdrant searches them exactly through the
# payload index instead of walking the graph (Qdrant's own default, 10 MB ≈ 6,600 × 384-d).
FULL_SCAN_KB = 10_000


@dataclass(frozen=True)
class ShardSpec:
    """What a shard's configuration depends on (passed to the build child as JSON)."""

    dim: int
    large: bool
    segment_mib: int = 0  # 0: Qdrant's own segment sizes

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardSpec:
        return cls(**json.loads(text))


def edge_config(spec: ShardSpec, building: bool = False) -> qe.EdgeConfig:
    """The Edge configuration of a collection of `spec`.

    Args:
        building: for the index builder: the segments it does not rebuild stay on disk (their
            int8 copies and graphs are not loaded into RAM), so its memory is that of the one
            segment it builds. The store loads the shard again with the serving form.
    """
    if not spec.large:
        hnsw = qe.HnswIndexConfig(
            m=HNSW_M, ef_construct=EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB
        )
        vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw)
    # Explicit both ways: a tier left out keeps what the shard last had (the builder's, say).
    ram = qe.Memory.Cold if building else qe.Memory.Pinned
    hnsw = qe.HnswIndexConfig(
        m=HNSW_M, ef_construct=EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB, memory=ram
    )
    quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=ram)
    vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine, memory=qe.Memory.Cold)
    optimizers = None
    if spec.segment_mib:
        optimizers = qe.EdgeOptimizersConfig(max_segment_size=spec.segment_mib * 1024)
    return qe.EdgeConfig(
        vectors=vectors, hnsw_config=hnsw, quantization_config=quant, optimizers=optimizers
    )
