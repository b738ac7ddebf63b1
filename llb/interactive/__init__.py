"""Interactive segmentation of one frame: clicks (and an optional prior mask) in, a binary object mask out.

The app uses this to let a person define an object with a few clicks before LLB tracks it. Backends share
one small interface (`ClickSegmenter`); `default_click_segmenter()` picks one:
a SAM/MobileSAM predictor when `$LLB_SAM_CHECKPOINT` names a checkpoint and its package is installed;
otherwise `$LLB_CLICK_BACKEND`: `model` (the default: the trained click model `lite-clicks`, a light head over
EfficientNet-Lite2 features and u2netp's saliency, see checkpoints/lite-clicks.md), `local-zone` (the hand-made
method: u2netp's salient region under the first click, corrected by GrabCut in local zones around later clicks)
or `grabcut` (click-seeded GrabCut). Unset, a missing click checkpoint or u2netp falls back to `local-zone`, and
without u2netp to plain GrabCut; set explicitly to `model`, a missing file is an error that says what to install.
"""

from __future__ import annotations

import logging

from ..settings import from_env
from .base import Click, ClickSegmenter
from .grabcut import GrabCutClickSegmenter
from .local_zone import LocalZoneClickSegmenter
from .saliency import U2NetSaliency, find_u2netp
from .sam import SamClickSegmenter

__all__ = [
    "CLICK_BACKENDS",
    "Click",
    "ClickModelSegmenter",
    "ClickSegmenter",
    "GrabCutClickSegmenter",
    "LocalZoneClickSegmenter",
    "SamClickSegmenter",
    "U2NetSaliency",
    "default_click_segmenter",
    "find_u2netp",
]


def __getattr__(name: str) -> object:
    """`ClickModelSegmenter` imports torch and timm: loaded when first asked for."""
    if name == "ClickModelSegmenter":
        from .click_segmenter import ClickModelSegmenter

        return ClickModelSegmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CLICK_BACKENDS = ("model", "local-zone", "grabcut")
log = logging.getLogger(__name__)


def default_click_segmenter() -> ClickSegmenter:
    """SAM when configured, else the backend named by `$LLB_CLICK_BACKEND`; unset, the trained click model, or
    the hand-made fallback when its weights (or u2netp) cannot be found."""
    env = from_env()
    if env.sam_checkpoint:
        return SamClickSegmenter(env.sam_checkpoint, env.sam_model)
    backend = env.click_backend
    if backend is not None and backend not in CLICK_BACKENDS:
        raise ValueError(f"LLB_CLICK_BACKEND={backend!r}: choose one of {', '.join(CLICK_BACKENDS)}")
    if backend in (None, "model"):
        from llb.checkpoint import CheckpointError

        from .click_segmenter import ClickModelSegmenter

        try:
            return ClickModelSegmenter.load()
        except (CheckpointError, FileNotFoundError) as err:
            if backend == "model":
                raise  # asked for explicitly: the message says what is missing
            log.warning("click model unavailable (%s); clicks use the hand-made fallback", err)
    model = find_u2netp()
    if backend == "grabcut" or model is None:
        return GrabCutClickSegmenter(None)
    return LocalZoneClickSegmenter(U2NetSaliency(model))
