"""The DINO meta-architecture: student, EMA teacher and losses behind two calls,
`forward_backward(crops)` and `update_teacher(momentum)`; train.py only wires and loops."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.backbone import MultiCropNet, create_backbone
from training.config import TrainConfig
from training.head import DINOHead
from training.loss import DINOLoss, koleo_loss


class DINO(nn.Module):
    """Student/teacher self-distillation (Caron et al. 2021).

    Args:
        cfg: the run configuration.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = create_backbone(cfg.model)
        h = cfg.head
        head_kwargs = dict(
            in_dim=backbone.num_features,
            out_dim=h.out_dim,
            hidden_dim=h.hidden_dim,
            bottleneck_dim=h.bottleneck_dim,
            nlayers=h.nlayers,
        )
        self.student = MultiCropNet(
            backbone, DINOHead(**head_kwargs, norm_last_layer=h.norm_last_layer)
        )
        # The teacher has no drop path; it starts as an exact copy of the student.
        self.teacher = MultiCropNet(
            create_backbone(cfg.model, drop_path_rate=0.0), DINOHead(**head_kwargs)
        )
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(
            h.out_dim,
            n_global=2,
            student_temp=cfg.loss.student_temp,
            center_momentum=cfg.loss.center_momentum,
            centering=cfg.loss.centering,
            sinkhorn_iters=cfg.loss.sinkhorn_iters,
        )
        self._ddp: DistributedDataParallel | None = None
        self.log_k = math.log(h.out_dim)

    @torch.no_grad()
    def load_backbones(self, state: dict[str, torch.Tensor]) -> None:
        """Start student and teacher backbones from the same weights (continued pretraining);
        the heads keep their fresh initialisation. Strict: every key must fit."""
        self.student.backbone.load_state_dict(state, strict=True)
        self.teacher.backbone.load_state_dict(state, strict=True)

    def wrap_ddp(self, device_ids: list[int] | None = None) -> None:
        """Synchronise the student's gradients across processes."""
        self._ddp = DistributedDataParallel(self.student, device_ids=device_ids)

    def compile_backbones(self) -> None:
        """torch.compile both backbones in place (one graph per crop size); state-dict keys stay."""
        self.student.backbone.compile()
        self.teacher.backbone.compile()

    def forward_backward(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        autocast_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """One step's forward and backward; returns detached scalars (no host sync).

        Args:
            crops: [global 1, global 2, locals] as made by MultiCropAugment.
            teacher_temp: τt at this iteration.
            autocast_dtype: bf16 on CUDA, None for fp32.
        """
        student = self._ddp or self.student
        device_type = crops[0].device.type
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            with torch.no_grad():
                teacher_out, _ = self.teacher(crops[:2])  # (2B, K): globals only
            student_out, student_cls = student(crops)  # (V·B, K), (2B, D)
        probs = self.dino_loss.teacher_probs(teacher_out, teacher_temp)  # (2, B, K)
        loss = self.dino_loss(student_out, probs)
        out = {"dino_loss": loss.detach()}
        if self.cfg.loss.koleo_weight > 0:
            koleo = sum(koleo_loss(c) for c in student_cls.chunk(2))
            loss = loss + self.cfg.loss.koleo_weight * koleo
            out["koleo_loss"] = koleo.detach()
        loss.backward()
        self.dino_loss.update_center(teacher_out)
        with torch.no_grad():
            p = probs.flatten(0, 1)
            # Collapse watch: per-sample entropy → ln K means uniform outputs; the entropy of
            # the batch-mean → 0 means one prototype wins for every image.
            out["teacher_entropy"] = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
            pm = p.mean(0)
            out["teacher_batch_entropy"] = -(pm * pm.clamp_min(1e-12).log()).sum()
        out["loss"] = loss.detach()
        return out

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, one fused foreach op over all parameters."""
        t_params = list(self.teacher.parameters())
        s_params = list(self.student.parameters())
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)

    def param_groups(self) -> list[dict]:
        """AdamW groups: weight decay on weights only, not on biases and norms, as the reference."""
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        return [
            {"params": decay, "apply_wd": True},
            {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
        ]

    def cancel_last_layer_grads(self) -> None:
        """Freeze the prototypes during the first epoch(s) (stabilises the start)."""
        for p in self.student.head.last_layer_parameters():
            p.grad = None

    @torch.no_grad()
    def clip_gradients(self, clip: float) -> torch.Tensor:
        """The reference's per-parameter clipping: each grad's norm is capped at `clip`.

        Done with foreach ops and no host sync (clip_coef ≤ 1 via clamp, not an if).
        Returns:
            a device bool, False when any gradient is non-finite (for the trainer's NaN guard).
        """
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if not grads:
            return torch.ones((), dtype=torch.bool)
        norms = torch._foreach_norm(grads)
        if clip > 0:
            coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
            torch._foreach_mul_(grads, coefs)
        return torch.isfinite(torch.stack(norms)).all()

    def teacher_backbone(self) -> nn.Module:
        """The backbone that gets exported and evaluated (the paper evaluates the teacher)."""
        return self.teacher.backbone
