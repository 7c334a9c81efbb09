"""DINO projection head: MLP → bottleneck → L2-normalise → weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """The head of DINO §3 / the reference `DINOHead`.

    Args:
        in_dim: backbone feature size.
        out_dim: number of prototypes K (65536 in the paper).
        hidden_dim: MLP width.
        bottleneck_dim: size of the L2-normalised bottleneck.
        nlayers: MLP depth (≥ 1).
        norm_last_layer: fix the weight-norm gain of the last layer to 1 (more stable for ViT-S).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # Gain g starts at 1 (the parametrisation would set it to ||v||, which is not 1).
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.mlp(x))  # (B, bottleneck) → (B, out_dim)

    def prototypes(self, z: torch.Tensor) -> torch.Tensor:
        """L2-normalise the bottleneck and score it against the prototypes, always in fp32.

        Under bf16 autocast an 8-bit mantissa on logits later divided by τt = 0.04 is visible noise
        in the teacher's targets (worse with free prototype norms), so autocast is off here.
        """
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1, p=2)
            return self.last_layer(z)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen during the first epoch(s)."""
        return list(self.last_layer.parameters())
