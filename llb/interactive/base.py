"""The interface every click segmenter implements, and the click type it takes."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


@dataclass(frozen=True)
class Click:
    """A click in image pixels; `positive` marks the object, otherwise the background."""

    x: int
    y: int
    positive: bool = True


class ClickSegmenter(Protocol):
    """Clicks on an RGB frame -> a binary mask of one object.

    `prior` is the object's current mask on that frame when there is one (a propagated result being
    corrected, an uploaded mask); backends use it as the starting guess that the clicks then fix.
    `avoid` (H, W) bool marks the other objects' pixels: the mask keeps out of them (see `keep_out`), so a
    click for a small object held by a bigger one gets the small object, not both.
    """

    name: str

    def segment(
        self,
        image: np.ndarray,
        clicks: Sequence[Click],
        prior: np.ndarray | None = None,
        avoid: np.ndarray | None = None,
    ) -> np.ndarray:
        """(H, W) bool mask; empty when there is no positive click and no prior."""
        ...

    def fork(self) -> ClickSegmenter:
        """A segmenter for one session: the same weights, its own per-frame state (features, click history),
        so that sessions clicking at the same moment get exactly what each would get alone."""
        ...


def click_radius(shape: tuple[int, ...]) -> int:
    """Radius of the disc a click pins as certain object or background: about 1.2% of the shorter side."""
    return max(3, round(min(shape[:2]) * 0.012))


def pin_clicks(mask: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
    """`mask` (H, W) bool with a small disc (half the click radius) under each click set to its side, later
    clicks last: whatever a model predicts, the pixel a person clicked shows what they asked for."""
    pins = np.full(mask.shape, 255, np.uint8)
    radius = max(1, click_radius(mask.shape) // 2)
    for c in clicks:
        cv2.circle(pins, (c.x, c.y), radius, int(c.positive), -1)
    return np.where(pins == 255, mask, pins == 1)


def keep_out_region(avoid: np.ndarray | None, clicks: Sequence[Click]) -> np.ndarray | None:
    """The part of `avoid` (H, W) bool (other objects' pixels) a mask must keep out of: all of it except the
    connected parts a positive click falls on (a click there says the person wants those pixels); None when
    nothing is left."""
    if avoid is None or not avoid.any():
        return None
    inside = [c for c in clicks if c.positive and avoid[c.y, c.x]]
    if inside:
        _, parts = cv2.connectedComponents(avoid.astype(np.uint8), connectivity=8)
        avoid = avoid & ~np.isin(parts, [parts[c.y, c.x] for c in inside])
    return avoid if avoid.any() else None


def keep_out(mask: np.ndarray, avoid: np.ndarray | None, clicks: Sequence[Click]) -> np.ndarray:
    """`mask` (H, W) bool without the pixels of `avoid` it must keep out of (`keep_out_region`)."""
    region = keep_out_region(avoid, clicks)
    return mask if region is None else mask & ~region


def anchor_click(prior: np.ndarray, clicks: Sequence[Click]) -> Click | None:
    """A hidden positive click at the deepest interior point of `prior` (H, W) bool (the distance transform's
    maximum), away from the negative clicks: a correction of a mask that already exists starts from "this is
    the object", so that one background click on a false positive trims it instead of erasing the object.
    None when the prior has no pixel left outside the negative clicks' discs."""
    inside = prior.astype(np.uint8)
    radius = 2 * click_radius(prior.shape)
    for c in clicks:
        if not c.positive:
            cv2.circle(inside, (c.x, c.y), radius, 0, -1)
    if not inside.any():
        return None
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(int(x), int(y), True)


def progressive_merge(prev: np.ndarray, new: np.ndarray, click: Click) -> np.ndarray:
    """FocalClick's progressive merge (Chen et al. 2022): a corrective click changes only the connected part of
    the change (`new` xor `prev`, both (H, W) bool) that holds it; the rest of the mask stays as it was, so a
    click cannot undo what earlier clicks fixed far away (and a click whose pixel did not change changes nothing)."""
    change = (new != prev).astype(np.uint8)
    if not change[click.y, click.x]:
        return prev
    _, parts = cv2.connectedComponents(change, connectivity=8)
    part = parts == parts[click.y, click.x]
    return prev | part if click.positive else prev & ~part


class KeepsOut(ABC):
    """A click segmenter whose mask (`_segment`) is then kept out of the other objects' pixels (`keep_out`)."""

    def segment(
        self,
        image: np.ndarray,
        clicks: Sequence[Click],
        prior: np.ndarray | None = None,
        avoid: np.ndarray | None = None,
    ) -> np.ndarray:
        """The mask of `clicks` (see ClickSegmenter), kept out of `avoid`."""
        return keep_out(self._segment(image, clicks, prior), avoid, clicks)

    @abstractmethod
    def _segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None) -> np.ndarray:
        """(H, W) bool mask of `clicks` on `image`, refining `prior` where given."""


class ClickHistory:
    """Masks after every prefix of recent click sequences on one frame, keyed also by the starting prior, so
    that each new click computes only itself (people, and the click protocol, add clicks one at a time)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._masks: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._masks)

    def clear(self) -> None:
        self._masks.clear()

    @staticmethod
    def start(prior: np.ndarray | None, avoid: np.ndarray | None = None) -> bytes:
        """Key of the mask a sequence starts from (none, or a hash of the prior) and of the pixels it avoids."""
        key = b""
        for mask in (prior, avoid):
            key += b"-" if mask is None else hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=8).digest()
        return key

    def resume(
        self,
        prior: np.ndarray | None,
        clicks: Sequence[Click],
        shape: tuple[int, int],
        avoid: np.ndarray | None = None,
    ) -> tuple[bytes, np.ndarray, int]:
        """(start key, mask, k): the stored mask after the longest known prefix of `clicks` and its length k,
        or the prior (an empty mask without one) and 0."""
        start = self.start(prior, avoid)
        for k in range(len(clicks), 0, -1):
            mask = self._masks.get((start, *clicks[:k]))
            if mask is not None:
                return start, mask, k
        return start, (prior.copy() if prior is not None else np.zeros(shape, bool)), 0

    def add(self, start: bytes, clicks: Sequence[Click], mask: np.ndarray) -> None:
        """Remember the mask after `clicks`, dropping the oldest entry when full."""
        if len(self._masks) >= self.size:
            self._masks.pop(next(iter(self._masks)))
        self._masks[(start, *clicks)] = mask


def trivial_mask(clicks: Sequence[Click], prior: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The answer when there is nothing to segment: the prior (or an empty mask) without clicks, an empty mask
    for negative clicks alone without a prior; None when the clicks need a backend."""
    if not clicks:
        return prior if prior is not None else np.zeros(shape, dtype=bool)
    if prior is None and not any(c.positive for c in clicks):
        return np.zeros(shape, dtype=bool)
    return None
