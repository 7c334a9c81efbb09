"""Run metrics: per-epoch JSONL, TensorBoard scalars, a PNG of the curves, and collapse warnings."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class MetricsLog:
    """Writes `metrics.jsonl` (one line per epoch) and TensorBoard events under the run dir.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files (under run_dir/tb).
        out_dim: number of prototypes K, for the collapse thresholds.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, out_dim: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.log_k = math.log(out_dim)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars(
            {f"epoch/{k}": v for k, v in record.items() if isinstance(v, float)},
            int(record["step"]),
        )

    def check(self, values: dict[str, float], step: int) -> None:
        """Stop on a non-finite loss; warn when the teacher's outputs look collapsed."""
        loss = values.get("loss", 0.0)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at step {step}: training diverged. Lower optim.base_lr, raise "
                "optim.warmup_epochs or check the data; the last checkpoint is before this step."
            )
        ent, batch_ent = values.get("teacher_entropy"), values.get("teacher_batch_entropy")
        if ent is not None and ent > 0.95 * self.log_k:
            log.warning(
                "collapse watch: teacher entropy %.3f is near ln(K)=%.3f (uniform outputs)",
                ent,
                self.log_k,
            )
        if batch_ent is not None and batch_ent < 0.05 * self.log_k:
            log.warning(
                "collapse watch: entropy of the teacher's batch mean %.3f is near 0 "
                "(one prototype dominates)",
                batch_ent,
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path) -> Path | None:
    """`curves.png`: loss per epoch and k-NN accuracy, from metrics.jsonl."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["epoch"] for r in records], [r["loss"] for r in records], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="DINO loss", title="training loss")
    knn = [(r["epoch"], r["knn_top1"]) for r in records if r.get("knn_top1") is not None]
    if knn:
        ax_knn.plot(*zip(*knn, strict=True), marker="o", color="tab:green")
    ax_knn.set(xlabel="epoch", ylabel="top-1 %", title="k-NN accuracy (held out)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
