"""Building a Qdrant Edge shard's search index in a child process.

Qdrant Edge's `EdgeShard.optimize()` holds the Python GIL for the whole build: measured here, a
thread of the same process that counted ticks in a loop did not advance once during a 52 s
build of 30,000 points. In the service's process that would stop every request, `/healthz`
included, for minutes on a large collection (265 s for 1M points). So a large build runs in a
child process of its own: the parent closes the shard (Edge locks a shard's WAL, one process
at a time), the child loads it, optimises, flushes and exits, and the parent reopens it. While
it runs the parent answers everything else; only that one collection reports itself busy.

The child dies with its parent (PR_SET_PDEATHSIG), so a killed indexer leaves no builder
behind holding the shard: the next run reopens the shard (Edge recovers from its WAL and drops
an unfinished segment) and builds again.

    python -m core.store.edge_build SHARD_DIR SPEC_JSON    (what the parent runs)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.store.edge_config import ShardSpec, edge_config
from core.store.layout import StoreError

_PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Not Linux: no prctl, and the child then outlives a killed parent.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def status_mib(pid: int, field: str = "VmHWM") -> float:
    """A memory field of a live process's /proc status (VmHWM: its peak resident memory;
    VmRSS: now), in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def build_apart(
    shard_dir: Path, spec: ShardSpec, on_wait: Callable[[float], None] | None = None
) -> float:
    """Optimise the (closed) shard at `shard_dir` in a child process; returns the child's peak
    resident memory in MiB (what the build cost, for benchmarks and the log).

    Args:
        on_wait: called about twice a second with the seconds elapsed (a progress display).
    Raises:
        StoreError: the build failed (its stderr's end in the message).
    """
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the `core` package
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    cmd = [sys.executable, "-m", "core.store.edge_build", str(shard_dir), spec.to_json()]
    t0 = time.monotonic()
    peak = 0.0
    with subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    ) as child:
        while True:
            try:
                child.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                peak = max(peak, status_mib(child.pid))
                if on_wait is not None:
                    on_wait(time.monotonic() - t0)
        err = child.stderr.read() if child.stderr else ""
    if child.returncode != 0:
        tail = err.strip().splitlines()[-3:]
        raise StoreError(
            f"building the search index of {shard_dir} failed (exit {child.returncode}): "
            + " | ".join(tail)
        )
    return peak


def main(argv: list[str] | None = None) -> int:
    import qdrant_edge as qe

    shard_dir, spec_json = argv if argv is not None else sys.argv[1:]
    spec = ShardSpec.from_json(spec_json)
    shard = qe.EdgeShard.load(shard_dir, edge_config(spec, building=True))
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
