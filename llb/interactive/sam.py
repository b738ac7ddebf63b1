"""SAM / MobileSAM as a click segmenter, for people who have a checkpoint (none ships here).

`model_type` `vit_t` is MobileSAM (package `mobile_sam`), `vit_b`/`vit_l`/`vit_h` are SAM
(package `segment_anything`); both expose the same `sam_model_registry` and `SamPredictor`.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Click, KeepsOut


def load_predictor(checkpoint: str, model_type: str) -> Any:
    """A `SamPredictor` on CUDA when available; ImportError/FileNotFoundError say what is missing."""
    import torch

    package = "mobile_sam" if model_type == "vit_t" else "segment_anything"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(f"LLB_SAM_CHECKPOINT is set but the package '{package}' is not installed") from err
    model = module.sam_model_registry[model_type](checkpoint=checkpoint)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return module.SamPredictor(model)


class SamClickSegmenter(KeepsOut):
    """Points (and the prior's box, when correcting) prompt SAM; the image embedding is kept per frame."""

    def __init__(self, checkpoint: str, model_type: str = "vit_t", predictor: Any | None = None) -> None:
        self.predictor = predictor if predictor is not None else load_predictor(checkpoint, model_type)
        self.name = f"SAM ({model_type})"
        self._image_key: str | None = None
        self._lock = threading.Lock()  # the predictor holds one image's embedding: one click at a time

    def fork(self) -> SamClickSegmenter:
        """Itself: the predictor is too large to copy, so sessions take turns on it (see `segment`)."""
        return self

    def _segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None) -> np.ndarray:
        has_prior = prior is not None and bool(prior.any())
        if not clicks:
            return prior.astype(bool) if has_prior else np.zeros(image.shape[:2], dtype=bool)
        if not has_prior and not any(c.positive for c in clicks):
            return np.zeros(image.shape[:2], dtype=bool)
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        box = None
        if has_prior:
            ys, xs = np.nonzero(prior)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        with self._lock:
            if key != self._image_key:
                self.predictor.set_image(image)
                self._image_key = key
            masks, scores, _ = self.predictor.predict(
                point_coords=np.array([[c.x, c.y] for c in clicks], dtype=np.float32),
                point_labels=np.array([int(c.positive) for c in clicks]),
                box=box,
                multimask_output=len(clicks) == 1 and box is None,
            )
        return np.asarray(masks[int(np.argmax(scores))], dtype=bool)
