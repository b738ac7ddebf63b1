"""Click segmentation without SAM: a salient-object map where the click lands on a salient object,
click-seeded GrabCut elsewhere.

- A positive click on a salient region (u2netp, when available) takes that region. Salient objects that
  touch merge into one region (a hand holding a cup); negative clicks split it along image edges
  (marker watershed between the positive and negative clicks).
- Otherwise GrabCut fits colour models in a box around the positive clicks (or around the prior mask when a
  result is being corrected): the clicks pin discs of certain object or background.
Only the connected parts holding a positive click (or overlapping the prior) are kept, and each click's own
disc always holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .base import Click, KeepsOut, click_radius

WORK_SIDE = 400  # GrabCut runs at most at this size (speed); the mask is scaled back
ITERATIONS = 4
SALIENT = 0.5
BOX = 0.18  # half-size of the box around a lone click, as a fraction of the shorter side


class GrabCutClickSegmenter(KeepsOut):
    """The backend that needs no SAM checkpoint; `saliency` (image -> [0, 1] map) finds whole objects."""

    def __init__(self, saliency: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.saliency = saliency
        self.name = "u2netp + GrabCut" if saliency else "GrabCut"

    def fork(self) -> GrabCutClickSegmenter:
        """Itself: it keeps no per-frame state, so sessions can share it."""
        return self

    def _segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None) -> np.ndarray:
        h, w = image.shape[:2]
        prior = prior.astype(bool) if prior is not None and prior.any() else None
        positives = [c for c in clicks if c.positive]
        if not positives and prior is None:
            return np.zeros((h, w), dtype=bool)
        seeds = _seeds((h, w), clicks, click_radius((h, w)))
        mask = self._salient(image, clicks, seeds) if prior is None and self.saliency is not None else None
        if mask is None:
            mask = _grabcut_clicks(image, clicks, prior)
        anchors = seeds == 1 if positives else prior
        mask = _components_touching(mask, anchors)
        pins = _seeds((h, w), clicks, max(1, click_radius((h, w)) // 2))
        return np.where(pins == 255, mask, pins == 1)

    def _salient(self, image: np.ndarray, clicks: Sequence[Click], seeds: np.ndarray) -> np.ndarray | None:
        """The salient region under the positive clicks, split by the negative ones; None off salient regions."""
        salient = self.saliency(image) > SALIENT
        positives = [c for c in clicks if c.positive]
        if not all(salient[c.y, c.x] for c in positives):
            return None
        region = _components_touching(salient, seeds == 1)
        if not any(region[c.y, c.x] for c in clicks if not c.positive):
            return region
        markers = np.where(region, 0, 2).astype(np.int32)
        markers[seeds == 1] = 1
        markers[seeds == 0] = 2
        cv2.watershed(np.ascontiguousarray(image[..., ::-1]), markers)
        return markers == 1


def _seeds(shape: tuple[int, int], clicks: Sequence[Click], radius: int) -> np.ndarray:
    """1 for certain object, 0 for certain background, 255 elsewhere; positives win where discs overlap."""
    seeds = np.full(shape, 255, dtype=np.uint8)
    for c in sorted(clicks, key=lambda c: c.positive):
        cv2.circle(seeds, (c.x, c.y), radius, int(c.positive), -1)
    return seeds


def _grabcut_clicks(image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None) -> np.ndarray:
    """GrabCut at reduced size: certain background outside a box around the guess, clicks as certain seeds."""
    h, w = image.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    pts = [Click(min(size[0] - 1, int(c.x * scale)), min(size[1] - 1, int(c.y * scale)), c.positive) for c in clicks]
    mask = np.full(size[::-1], cv2.GC_BGD, dtype=np.uint8)
    if prior is not None:
        guess = cv2.resize(prior.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        ys, xs = np.nonzero(guess)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        mx, my = (x1 - x0) // 4 + 4, (y1 - y0) // 4 + 4
        mask[max(0, y0 - my) : y1 + my, max(0, x0 - mx) : x1 + mx] = cv2.GC_PR_BGD
        mask[guess] = cv2.GC_PR_FGD
    else:
        half = max(6, round(min(size) * BOX))
        xs = [p.x for p in pts if p.positive]
        ys = [p.y for p in pts if p.positive]
        mask[max(0, min(ys) - half) : max(ys) + half, max(0, min(xs) - half) : max(xs) + half] = cv2.GC_PR_FGD
    seeds = _seeds(mask.shape, pts, click_radius(mask.shape))
    mask[seeds == 1] = cv2.GC_FGD
    mask[seeds == 0] = cv2.GC_BGD
    foreground = mask % 2 == 1  # GC_FGD and GC_PR_FGD are odd
    if not foreground.all() and foreground.any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        with contextlib.suppress(cv2.error):  # degenerate colour statistics (e.g. a flat image): keep the guess
            cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), mask, None, bgd, fgd, ITERATIONS, cv2.GC_INIT_WITH_MASK)
        foreground = mask % 2 == 1
    if scale < 1:
        return cv2.resize(foreground.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR) > 0
    return foreground


def _components_touching(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The connected components of `mask` that overlap `anchors`."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    wanted = np.unique(labels[anchors & mask])
    return np.isin(labels, wanted[wanted > 0])
