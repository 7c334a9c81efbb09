"""DINO loss: cross-entropy from the centred, sharpened teacher to the student over view pairs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, n_iters: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp centring: equipartition of the batch over the prototypes.

    Args:
        logits: teacher outputs (B, K) of this process.
        temp: teacher temperature.
    Returns:
        (B, K) assignment probabilities, rows summing to 1.
    """
    logits = logits.float() / temp
    # A constant shift cancels in the normalisations; it is shared across ranks so it does.
    shift = _all_reduce(logits.max().clone(), dist.ReduceOp.MAX)
    q = torch.exp(logits - shift).t()  # (K, B)
    n_samples = q.shape[1] * _world_size()
    n_protos = q.shape[0]
    # A prototype whose logits all sit ~88 nats (fp32) below the global maximum underflows to
    # an all-zero row, and 0/0 would turn the whole batch into NaN: such a row stays zero and
    # the others share its mass. Same for a sample's column.
    tiny = torch.finfo(q.dtype).tiny
    q /= _all_reduce(q.sum())
    for _ in range(n_iters):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= n_samples
    q *= n_samples
    return q.t()


class DINOLoss(nn.Module):
    """Cross-entropy between every teacher view and every *other* student view.

    The centre is a buffer (checkpointed with the module) holding the EMA of the teacher's batch
    mean, all-reduced so every process keeps the same centre.

    Args:
        out_dim: prototypes K.
        n_global: number of global views (the teacher sees only these).
        student_temp: τs.
        center_momentum: EMA momentum of the centre.
        centering: "center" (DINO) or "sinkhorn" (DINOv2).
        sinkhorn_iters: iterations of Sinkhorn-Knopp when used.
    """

    def __init__(
        self,
        out_dim: int,
        n_global: int = 2,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "center",
        sinkhorn_iters: int = 3,
    ) -> None:
        super().__init__()
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher targets, computed once: (n_global * B, K) logits → (n_global, B, K) probs."""
        teacher_out = teacher_out.float()
        if self.centering == "sinkhorn":
            probs = sinkhorn_knopp(teacher_out, teacher_temp, self.sinkhorn_iters)
        else:
            probs = F.softmax((teacher_out - self.center) / teacher_temp, dim=-1)
        return probs.view(self.n_global, -1, probs.shape[-1])

    def forward(self, student_out: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all (teacher view i, student view v) pairs with i ≠ v.

        Args:
            student_out: (V * B, K) logits, views in order [global 1, global 2, locals…].
            teacher_probs: (n_global, B, K) from `teacher_probs`.
        """
        n_views = student_out.shape[0] // teacher_probs.shape[1]
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        log_p = log_p.view(n_views, -1, log_p.shape[-1])  # (V, B, K)
        # Σ_i t_i · log p_v over i ≠ v equals (Σ_i t_i − t_v) · log p_v: one product per view.
        t_sum = teacher_probs.sum(0)  # (B, K)
        total = student_out.new_zeros((), dtype=torch.float32)
        for v in range(n_views):
            targets = t_sum - teacher_probs[v] if v < self.n_global else t_sum
            total = total - (targets * log_p[v]).sum(-1).mean()
        n_pairs = self.n_global * n_views - min(self.n_global, n_views)
        return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center ← m·center + (1 − m)·mean over all processes of the teacher outputs."""
        batch_sum = _all_reduce(teacher_out.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_out.shape[0] * _world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeo regulariser: −mean log distance to each sample's nearest neighbour.

    Args:
        x: (B, D) features (normalised here).
    """
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
    dist_nn = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(dist_nn + eps).mean()
