"""Training losses: the Lovasz segmentation loss and the cosine similarity between E1 and E2 (JOINT, LLB).

The official code (LWL's `LovaszSegLoss(per_image=False)`, weight 100) applies the Lovasz extension of the
Jaccard loss to the errors |y - sigmoid(logit)| of all pixels of the batch at once (`lovasz_sigmoid`);
Berman et al.'s binary Lovasz hinge on the margins 1 - logit * (2y - 1) is `lovasz_hinge`. With
`per_image=True` either is computed per image (each frame of each sequence) and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    gt_sorted (N, P): per image, labels in {0, 1} in the order of its sorted errors -> (N, P) weights (their
    sum is 1 for an image with foreground, the loss of a fully wrong prediction).
    """
    gts = gt_sorted.sum(dim=1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(1)
    union = gts + (1 - gt_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_from_errors(errors: Tensor, labels: Tensor) -> Tensor:
    """Lovasz extension per image, averaged: errors and labels (N, P), one row per image."""
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True, stable=True)  # ties in a fixed order
    return (errors_sorted * lovasz_grad(labels.gather(1, perm))).sum(dim=1).mean()


def _rows(x: Tensor, per_image: bool) -> Tensor:
    """(..., H, W) -> float (N, H*W), one row per image, or (1, all pixels)."""
    return x.float().reshape(-1, x.shape[-2] * x.shape[-1]) if per_image else x.float().reshape(1, -1)


def lovasz_hinge(logits: Tensor, labels: Tensor, per_image: bool = True) -> Tensor:
    """Binary Lovasz hinge (Berman et al. 2018): hinge errors relu(1 - logit * (2y - 1)).

    logits (..., H, W), labels (..., H, W) in {0, 1}; per image (every leading index) and averaged, or over
    all pixels at once.
    """
    x, y = _rows(logits, per_image), _rows(labels, per_image)
    return lovasz_from_errors(F.relu(1.0 - x * (2 * y - 1)), y)


def lovasz_sigmoid(logits: Tensor, labels: Tensor, per_image: bool = True) -> Tensor:
    """Lovasz loss on sigmoid scores, errors |y - sigmoid(logit)| (the official LWL/JOINT/LLB loss, there
    over all pixels of the batch at once: per_image=False).

    logits (..., H, W), labels (..., H, W) in {0, 1}.
    """
    p, y = torch.sigmoid(_rows(logits, per_image)), _rows(labels, per_image)
    return lovasz_from_errors((y - p).abs(), y)


SEGMENTATION_LOSSES = {"lovasz_sigmoid": lovasz_sigmoid, "lovasz_hinge": lovasz_hinge}


def cosine_similarity_loss(e1: Tensor, e2: Tensor) -> Tensor:
    """Mean cosine similarity between E1 and E2 of each frame of each sequence (JOINT's loss that makes the
    two encodings complementary). e1, e2 (N, B, D, h, w); each (D, h, w) map is one vector."""
    a = F.normalize(e1.float().flatten(2), dim=2)
    b = F.normalize(e2.float().flatten(2), dim=2)
    return (a * b).sum(dim=2).mean()


@dataclass
class LossConfig:
    """loss = seg_weight x segmentation loss + cosine_weight x cosine similarity (official weights 100 and 1)."""

    segmentation: str = "lovasz_sigmoid"  # or "lovasz_hinge"
    per_image: bool = False  # official: one Lovasz over all pixels of the batch
    seg_weight: float = 100.0
    cosine_weight: float = 1.0


@dataclass
class LossTerms:
    """The total loss and its two parts (unweighted)."""

    total: Tensor
    segmentation: Tensor
    cosine: Tensor


def training_loss(logits: Tensor, masks: Tensor, e1: Tensor, e2: Tensor, cfg: LossConfig) -> LossTerms:
    """logits (Nte, B, 1, H, W) against masks (Nte, B, 1, H, W); e1, e2 (N, B, D, h, w)."""
    if cfg.segmentation not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown segmentation loss {cfg.segmentation!r}: choose {', '.join(SEGMENTATION_LOSSES)}")
    seg = SEGMENTATION_LOSSES[cfg.segmentation](logits, masks, cfg.per_image)
    cos = cosine_similarity_loss(e1, e2)
    return LossTerms(cfg.seg_weight * seg + cfg.cosine_weight * cos, seg, cos)
