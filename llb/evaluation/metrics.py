"""The DAVIS measures: region similarity J, boundary F-measure F and their per-object statistics.

Each function reproduces the official DAVIS 2017 evaluation (davis2017-evaluation, `metrics.py` and
`utils.py`) number for number, edge cases included: J of an empty ground truth and an empty prediction is 1;
F takes the boundary maps of the Berkeley `seg2bmap` thinning, counts a boundary pixel as matched when the
other boundary lies within a disk of radius ceil(0.008 x image diagonal) (cv2.dilate with skimage's
`disk`), and scores empty boundaries as the official code does. Statistics are the mean, the recall
(fraction of frames above 0.5) and the decay (first minus last of 4 quantile bins).

Semi-supervised DAVIS treats void pixels (255) as background; that is the caller's business (see `davis.py`).
Pure numpy/OpenCV so that scoring needs no deep-learning stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS)
DECAY_BINS = 4


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map (bool, same shape) of a binary mask: a pixel is on the boundary where it differs from its
    east, south or south-east neighbour (Martin et al.'s seg2bmap, half a pixel towards the origin); on the
    last row only the east and on the last column only the south neighbour counts, and the corner never does."""
    seg = np.asarray(mask, dtype=bool)
    if seg.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {seg.shape}")
    b = np.zeros_like(seg)
    top_left = seg[:-1, :-1]
    b[:-1, :-1] = (top_left ^ seg[:-1, 1:]) | (top_left ^ seg[1:, :-1]) | (top_left ^ seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    return b


def boundary_radius(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Matching radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th x diagonal) (8 at 480p)."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(shape[0], shape[1]))


@cache
def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk(radius) as uint8: offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    out = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    out.setflags(write=False)
    return out


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J: |gt & pred| / |gt | pred| of two binary masks; 1 when both are empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def _bbox(b: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the True pixels of a 2-D bool map (exclusive ends), or None when there is none."""
    rows = np.flatnonzero(b.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(b.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _matched(boundary: np.ndarray, other: np.ndarray, kernel: np.ndarray) -> int:
    """How many pixels of `boundary` lie within the disk `kernel` of a pixel of `other` (same window)."""
    dilated = cv2.dilate(other.view(np.uint8), kernel)
    return int(np.count_nonzero(boundary & dilated.view(bool)))


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure F of two binary masks, as DAVIS: F1 of boundary precision and recall.

    All the work happens in the bounding box of both masks grown by the radius plus one pixel: every boundary
    pixel lies in it and the boundary rule sees only its east and south neighbours, so the window's own
    boundary map and dilation equal the full frame's there, and the counts are exact.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"need two 2-D masks of one shape, got {gt.shape} and {pred.shape}")
    box = _bbox(gt | pred)
    if box is None:
        return 1.0  # both empty: no boundary on either side, precision = recall = 1
    radius = boundary_radius(gt.shape, bound_th)
    (h, w), (y0, y1, x0, x1), m = gt.shape, box, radius + 1
    window = (slice(max(0, y0 - m), min(h, y1 + m)), slice(max(0, x0 - m), min(w, x1 + m)))
    gt_b, fg_b = seg2bmap(gt[window]), seg2bmap(pred[window])
    n_gt, n_fg = int(np.count_nonzero(gt_b)), int(np.count_nonzero(fg_b))
    if n_fg == 0 or n_gt == 0:  # official: precision 1 recall 0, precision 0 recall 1, or both 1
        return 1.0 if n_fg == n_gt else 0.0
    kernel = disk(radius)
    precision = _matched(fg_b, gt_b, kernel) / float(n_fg)
    recall = _matched(gt_b, fg_b, kernel) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_scores(
    gt: np.ndarray, pred: np.ndarray, ids: list[int], bound_th: float = BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """J and F (each (K,) float64) of the objects `ids` between two label maps of one frame."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    j = np.empty(len(ids))
    f = np.empty(len(ids))
    for k, i in enumerate(ids):
        gt_k, pred_k = gt == i, pred == i
        j[k] = jaccard(gt_k, pred_k)
        f[k] = f_measure(gt_k, pred_k, bound_th)
    return j, f


@dataclass(frozen=True)
class Statistics:
    """A measure's summary over one object's frames: mean, recall (share of frames > 0.5) and decay."""

    mean: float
    recall: float
    decay: float


def statistics(values: np.ndarray) -> Statistics:
    """Mean, recall and decay of per-frame values, as DAVIS's `db_statistics`.

    Decay: the frames are split at round(linspace(1, n, 5)) into 4 bins that share their edge frames, and
    the mean of the last bin is taken from that of the first. (The official code keeps those indices in uint8,
    which wraps beyond 256 frames; here they are exact, which is the same for every DAVIS sequence.)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"statistics need a non-empty 1-D array of per-frame values, got shape {values.shape}")
    ids = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(DECAY_BINS)]
    return Statistics(
        mean=float(np.mean(values)),
        recall=float(np.mean(values > 0.5)),
        decay=float(np.mean(bins[0]) - np.mean(bins[-1])),
    )
