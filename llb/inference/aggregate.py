"""Soft aggregation of independently tracked objects (Oh et al. 2018, RGMP).

Each object's probability p_i comes from its own tracker. The background gets prod_i (1 - p_i); every map is
turned into odds, logit(p) = log(p / (1 - p)), and a softmax over background and objects gives one
distribution per pixel, so objects compete for pixels instead of overlapping.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_aggregate(probs: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-object probabilities (K, H, W) -> merged distribution (K + 1, H, W), background first."""
    p = probs.float().clamp(eps, 1 - eps)
    background = torch.prod(1 - p, dim=0, keepdim=True)
    stacked = torch.cat([background, p]).clamp(eps, 1 - eps)
    return torch.softmax(torch.log(stacked) - torch.log1p(-stacked), dim=0)
