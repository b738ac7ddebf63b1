"""The hand-made click segmenter (the fallback when the click model's weights are missing): salient regions for
the first mask, then local corrections that leave the rest of the mask alone.

- The salient-object region (u2netp > 0.5, connected parts) under the first (positive) click gives the first
  mask.
- Each later click that contradicts the mask (positive off it, negative on it) opens a local zone: a disc of
  `ZONE` x the image's longer side around the click, plus, for a negative click, the part of its salient region
  geodesically closer to it than to any positive click, the geodesic distance running along the colour
  gradient.
- GrabCut runs on the zone's bounding box only: pixels outside the zone are fixed to the current mask, zone
  pixels start as probably the click's side, every click's disc is certain. Only the zone changes, and only
  the parts of the mask holding a positive click are kept.
Clicks are replayed in order (results of click prefixes are kept), so the mask depends on the clicks alone.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from skimage.graph import MCP_Geometric

from .base import Click, ClickHistory, KeepsOut, click_radius, trivial_mask

ZONE = 0.08  # radius of a click's local zone, as a fraction of the longer image side
SALIENT = 0.5
ITERATIONS = 3
GRADIENT_WEIGHT = 20.0  # geodesic cost per pixel: 1 + weight x colour gradient (Lab, 0..1 scale)
HISTORY = 64


class LocalZoneClickSegmenter(KeepsOut):
    """Salient regions + local GrabCut corrections; `saliency` maps an image to [0, 1] (u2netp)."""

    def __init__(self, saliency: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.saliency = saliency
        self.name = "u2netp + local GrabCut" if saliency else "local GrabCut"
        self._key: str | None = None
        self._frame: dict[str, np.ndarray] = {}
        self._history = ClickHistory(HISTORY)

    def fork(self) -> LocalZoneClickSegmenter:
        """The same saliency model with this session's own frame state."""
        return LocalZoneClickSegmenter(self.saliency)

    def prepare(self, image: np.ndarray) -> None:
        """Saliency components and the colour-gradient cost of a frame (H, W, 3) RGB; kept for its clicks."""
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key == self._key:
            return
        h, w = image.shape[:2]
        salient = self.saliency(image) > SALIENT if self.saliency is not None else np.zeros((h, w), bool)
        _, regions = cv2.connectedComponents(salient.astype(np.uint8), connectivity=8)
        lab = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32) / 255
        grad = np.sqrt(
            sum(
                cv2.Sobel(lab[..., i], cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(lab[..., i], cv2.CV_32F, 0, 1) ** 2
                for i in range(3)
            )
        )
        self._frame = {"regions": regions, "cost": 1 + GRADIENT_WEIGHT * grad}
        self._key = key
        self._history.clear()

    def _segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None) -> np.ndarray:
        h, w = image.shape[:2]
        prior = prior.astype(bool) if prior is not None and prior.any() else None
        if (trivial := trivial_mask(clicks, prior, (h, w))) is not None:
            return trivial
        self.prepare(image)
        start, mask, done = self._history.resume(prior, clicks, (h, w))
        for k in range(done, len(clicks)):
            mask = self._apply(image, mask, clicks[: k + 1])
            self._history.add(start, clicks[: k + 1], mask)
        return mask.copy()

    def _apply(self, image: np.ndarray, mask: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
        """The mask after the last of `clicks`, given the mask before it."""
        click = clicks[-1]
        if bool(mask[click.y, click.x]) == click.positive:
            return mask
        regions = self._frame["regions"]
        region = regions[click.y, click.x]
        if len(clicks) == 1 and region > 0:
            return regions == region
        h, w = mask.shape
        zone = np.zeros((h, w), np.uint8)
        cv2.circle(zone, (click.x, click.y), max(3, round(ZONE * max(h, w))), 1, -1)
        zone = zone.astype(bool)
        positives = [c for c in clicks[:-1] if c.positive]
        if not click.positive and region > 0 and positives:
            zone |= self._geodesic_part(regions == region, click, positives)
        out = mask.copy()
        out[zone] = _local_grabcut(image, mask, zone, clicks)[zone]
        pins = [c for c in clicks if c.positive]
        return _components_touching(out, pins) if pins else out

    def _geodesic_part(self, region: np.ndarray, click: Click, positives: Sequence[Click]) -> np.ndarray:
        """Pixels of `region` geodesically closer (colour-gradient cost) to `click` than to every positive."""
        ys, xs = np.nonzero(region)
        points = [click, *positives]
        y0 = min(ys.min(), *(p.y for p in points))
        y1 = max(ys.max(), *(p.y for p in points)) + 1
        x0 = min(xs.min(), *(p.x for p in points))
        x1 = max(xs.max(), *(p.x for p in points)) + 1
        cost = self._frame["cost"][y0:y1, x0:x1]
        to_neg, _ = MCP_Geometric(cost).find_costs([(click.y - y0, click.x - x0)])
        to_pos, _ = MCP_Geometric(cost).find_costs([(p.y - y0, p.x - x0) for p in positives])
        part = np.zeros(region.shape, bool)
        part[y0:y1, x0:x1] = region[y0:y1, x0:x1] & (to_neg < to_pos)
        return part


def _local_grabcut(image: np.ndarray, mask: np.ndarray, zone: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """GrabCut on the zone's bounding box (plus a margin): outside the zone fixed to `mask`, inside probably the
    last click's side, every click's disc certain. Returns the full-size mask with the box's result pasted in."""
    click = clicks[-1]
    h, w = mask.shape
    ys, xs = np.nonzero(zone)
    margin = max(8, round(0.3 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    crop_mask, crop_zone = mask[y0:y1, x0:x1], zone[y0:y1, x0:x1]
    labels = np.where(crop_mask, cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
    labels[crop_zone] = cv2.GC_PR_FGD if click.positive else cv2.GC_PR_BGD
    disc = np.full(labels.shape, 255, np.uint8)
    for c in sorted(clicks, key=lambda c: c.positive):  # positives win where discs overlap
        cv2.circle(disc, (c.x - x0, c.y - y0), click_radius((h, w)), int(c.positive), -1)
    labels[disc == 1] = cv2.GC_FGD
    labels[disc == 0] = cv2.GC_BGD
    out = mask.copy()
    fg = labels % 2 == 1
    if fg.any() and not fg.all():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, ::-1])
        with contextlib.suppress(cv2.error):  # degenerate colour statistics: keep the start labels
            cv2.grabCut(crop, labels, None, bgd, fgd, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    out[y0:y1, x0:x1] = labels % 2 == 1
    return out


def _components_touching(mask: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """The connected parts of `mask` holding a click."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = {labels[c.y, c.x] for c in clicks} - {0}
    return np.isin(labels, list(keep)) if keep else np.zeros(mask.shape, bool)
