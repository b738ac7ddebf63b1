"""Induction branch: the few-shot learner A that fits the target model T_tau by steepest descent (paper eq. 1).

The target model is a KxK convolution tau (D, C, K, K) mapping learner features x (C, h, w) to a D-channel
target encoding. Given the memory {(x_n, E2_n, W_n)}, the learner minimises

    L(tau) = 1/2 sum_n omega_n ||W_n . (tau * x_n - E2_n)||^2 + 1/2 ||r tau||^2

where `*` is 2-D cross-correlation (padding K//2), `.` is element-wise, omega_n are optional per-sample memory
weights and r is the learned regulariser `filter_reg` (the paper's lambda equals r^2). Each step moves along the
gradient g with the exact minimising step length of the quadratic, alpha = |g|^2 / |J g|^2 (LWL). Every
operation is differentiable, so the network learns through the optimiser during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import InductionConfig


def apply_filter(feat: Tensor, tau: Tensor) -> Tensor:
    """Target model T_tau: feat (N, B, C, h, w), tau (B, D, C, K, K) -> (N, B, D, h, w).

    Each of the B sequences has its own filter, applied as one grouped convolution.
    """
    n, b, c, h, w = feat.shape
    d, k = tau.shape[1], tau.shape[-1]
    out = F.conv2d(feat.reshape(n, b * c, h, w), tau.reshape(b * d, c, k, k), padding=k // 2, groups=b)
    return out.reshape(n, b, d, h, w)


def filter_gradient(feat: Tensor, residual: Tensor, filter_size: int) -> Tensor:
    """Adjoint of `apply_filter`: sum_n x_n correlated with residual_n.

    feat (N, B, C, h, w), residual (N, B, D, h, w) -> (B, D, C, K, K).
    """
    n, b, c, h, w = feat.shape
    d = residual.shape[2]
    pad = filter_size // 2
    inp = feat.permute(2, 1, 0, 3, 4).reshape(c, b * n, h, w)
    weight = residual.permute(1, 2, 0, 3, 4).reshape(b * d, n, h, w)
    grad = F.conv2d(inp, weight, padding=pad, groups=b)  # (C, B*D, K, K)
    return grad.reshape(c, b, d, filter_size, filter_size).permute(1, 2, 0, 3, 4)


@dataclass
class LearnerMemory:
    """The learner's training set: features, labels and weights of N memory frames of B sequences.

    feat (N, B, C, h, w); label E2 (N, B, D, h, w); weight W (N, B, D, h, w); sample_weight omega (N, B) or None.
    """

    feat: Tensor
    label: Tensor
    weight: Tensor
    sample_weight: Tensor | None = None

    def residual_weight(self) -> Tensor:
        """W_n sqrt(omega_n): the factor on the data residual, (N, B, D, h, w)."""
        if self.sample_weight is None:
            return self.weight
        return self.weight * self.sample_weight.sqrt()[:, :, None, None, None]


class FewShotLearner(nn.Module):
    """Steepest-descent learner with the exact step length and a learned regulariser (LWL's optimiser)."""

    def __init__(self, cfg: InductionConfig, feature_dim: int, label_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.label_dim = label_dim
        self.filter_reg = nn.Parameter(torch.full((1,), cfg.init_reg))

    def initial_filter(self, batch: int, like: Tensor) -> Tensor:
        """tau0 = 0, shape (B, D, C, K, K)."""
        k = self.cfg.filter_size
        return like.new_zeros(batch, self.label_dim, self.feature_dim, k, k)

    def loss(self, tau: Tensor, memory: LearnerMemory) -> Tensor:
        """Mean squared residual (data and regulariser entries together), as the official code reports it."""
        data = memory.residual_weight() * (apply_filter(memory.feat, tau) - memory.label)
        reg = self.filter_reg * tau
        return (data.square().sum() + reg.square().sum()) / (data.numel() + reg.numel())

    def step(self, tau: Tensor, memory: LearnerMemory) -> Tensor:
        """One steepest-descent step of eq. (1) with the optimal step length, per sequence."""
        w = memory.residual_weight()
        reg2 = self.filter_reg.square()
        data_res = w * (apply_filter(memory.feat, tau) - memory.label)
        grad = filter_gradient(memory.feat, w * data_res, self.cfg.filter_size) + reg2 * tau
        jg = w * apply_filter(memory.feat, grad)
        num = grad.square().sum(dim=(1, 2, 3, 4))
        den = jg.square().sum(dim=(0, 2, 3, 4)) + reg2 * num
        alpha = num / den.clamp_min(self.cfg.min_denominator)
        return tau - alpha[:, None, None, None, None] * grad

    def forward(
        self, memory: LearnerMemory, num_iter: int, tau: Tensor | None = None, track_loss: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Run `num_iter` steps from `tau` (zero when None). Returns tau and, if asked, the loss before each
        step and after the last one."""
        if tau is None:
            tau = self.initial_filter(memory.feat.shape[1], memory.feat)
        losses: list[Tensor] = []
        for _ in range(num_iter):
            if track_loss:
                losses.append(self.loss(tau, memory))
            tau = self.step(tau, memory)
        if track_loss:
            losses.append(self.loss(tau, memory))
        return tau, losses
