"""Soft aggregation of independently tracked objects (Oh et al. 2018, RGMP).

Each object's probability p_i comes from its own tracker. The background gets prod_i (1 - p_i); every map is
turned into odds, logit(p) = log(p / (1 - p)), and a softmax over background and objects gives one
distribution per pixel, so objects compete for pixels instead of overlapping.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_aggregate(probs: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-object probabilities (K, H, W) -> merged distribution (K + 1, H, W), background first.

    softmax(log odds) is odds / sum(odds): with every probability clamped to [eps, 1 - eps] the odds lie in
    [1e-7, 1e7], far from float32's limits, so no logarithm (log1p is slow on the CPU) or exponential is
    needed; the frame-sized maps are reused in place.
    """
    p = probs.float().clamp(eps, 1 - eps)
    odds = p.new_empty((len(p) + 1, *p.shape[1:]))
    if len(p) == 1:  # the product of one factor is that factor: one pass over the frame instead of two
        torch.sub(1, p, out=odds[:1])
    else:
        torch.prod(1 - p, dim=0, keepdim=True, out=odds[:1])
    odds[1:] = p
    odds.clamp_(eps, 1 - eps)
    odds.div_(1 - odds)
    return odds.div_(odds.sum(0, keepdim=True))
