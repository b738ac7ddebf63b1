"""Fusion of the two branches: the adaptive fusion module (AFM, paper eq. 2) and JOINT's plain sum.

AFM: E_tar = g1(E1*) . E1* + g2(E2*) . E2*, each gate g = sigmoid(conv1x1(relu(conv1x1(E)))) applied per
pixel and channel, so each branch decides how much of its target information flows on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Gate(nn.Module):
    """Two-layer per-pixel perceptron ending in a sigmoid: (B, D, h, w) -> gate in (0, 1), same shape."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.fc2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))


class AdaptiveFusion(nn.Module):
    """AFM: one gate for the transduction branch (E1*) and one for the induction branch (E2*)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate_transduction = Gate(dim)
        self.gate_induction = Gate(dim)

    def gates(self, e1_star: Tensor, e2_star: Tensor) -> tuple[Tensor, Tensor]:
        """The two gate maps (B, D, h, w), for display and analysis."""
        return self.gate_transduction(e1_star), self.gate_induction(e2_star)

    def forward(self, e1_star: Tensor, e2_star: Tensor) -> Tensor:
        """E1*, E2* (B, D, h, w) -> E_tar (B, D, h, w)."""
        g1, g2 = self.gates(e1_star, e2_star)
        return g1 * e1_star + g2 * e2_star


class SumFusion(nn.Module):
    """JOINT's fusion: E_tar = E1* + E2* (the AFM with both gates fixed at 1)."""

    def gates(self, e1_star: Tensor, e2_star: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(e1_star), torch.ones_like(e2_star)

    def forward(self, e1_star: Tensor, e2_star: Tensor) -> Tensor:
        return e1_star + e2_star


def build_fusion(kind: str, dim: int) -> nn.Module:
    """`afm` or `sum`."""
    if kind == "afm":
        return AdaptiveFusion(dim)
    if kind == "sum":
        return SumFusion()
    raise ValueError(f"unknown fusion {kind!r}: choose afm or sum")
