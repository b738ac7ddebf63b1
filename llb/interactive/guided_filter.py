"""Edge-aware refinement of a probability map at full resolution: the colour guided filter (He, Sun and Tang,
"Guided Image Filtering", ECCV 2010 / TPAMI 2013).

The click model predicts at its working size (384 px on the longer side, finest detail at stride 2); upsampled
to the frame, its boundaries are a few pixels soft. The guided filter fits, in every (2r+1)^2 window, the
probability as an affine function of the RGB colour, q = a . I + b, and averages the fits: where the image has an
edge, the refined probability takes it. OpenCV's own version lives in opencv-contrib (`cv2.ximgproc`), which
`rembg`'s pin on `opencv-python-headless` keeps out, so the few box filters are written here.

The fast guided filter (He and Sun 2015, arXiv:1505.00996) fits a and b on the image and the map subsampled by
`subsample` (the window shrinks with them), then upsamples the averaged a and b and applies them to the
full-resolution image: the per-pixel 3x3 solves, most of the cost, drop by subsample^2 while the edges still come
from the full-resolution colours.
"""

from __future__ import annotations

import cv2
import numpy as np

RADIUS = 0.01  # window radius, as a fraction of the longer image side
EPS = 1e-3  # regularisation of a: larger smooths more (colours in 0..1)
SUBSAMPLE = 2  # the fast guided filter's subsampling of the fit (1: the exact filter)


def _mean(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(image: np.ndarray, prob: np.ndarray, radius: int, eps: float = EPS, subsample: int = 1) -> np.ndarray:
    """Colour guided filter: image (H, W, 3) uint8 RGB guide, prob (H, W) float -> (H, W) float32; the fit runs
    `subsample` times smaller (the fast guided filter) with the window radius scaled to match."""
    full = image.astype(np.float32) / 255
    guide, p = full, prob.astype(np.float32)
    h, w = p.shape
    s = max(1, min(subsample, radius))
    if s > 1:
        small = (max(1, round(w / s)), max(1, round(h / s)))
        guide, p = (cv2.resize(x, small, interpolation=cv2.INTER_AREA) for x in (guide, p))
        radius = max(1, round(radius / s))
    mean_i, mean_p = _mean(guide, radius), _mean(p, radius)
    cov = _mean(guide * p[..., None], radius) - mean_i * mean_p[..., None]  # (H, W, 3)
    var = np.empty((*p.shape, 3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            v = _mean(guide[..., i] * guide[..., j], radius) - mean_i[..., i] * mean_i[..., j]
            var[..., i, j] = var[..., j, i] = v
    var += eps * np.eye(3, dtype=np.float32)
    a = np.linalg.solve(var, cov[..., None])[..., 0]  # (H, W, 3)
    b = mean_p - (a * mean_i).sum(-1)
    mean_a, mean_b = _mean(a, radius), _mean(b, radius)
    if s > 1:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    return (mean_a * full).sum(-1) + mean_b


def refine_mask(
    image: np.ndarray, logits: np.ndarray, radius: float = RADIUS, eps: float = EPS, subsample: int = SUBSAMPLE
) -> np.ndarray:
    """Logits (H, W) at the image's size -> (H, W) bool: sigmoid, (fast) guided filter on `image`, threshold 0.5."""
    prob = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    r = max(1, round(radius * max(image.shape[:2])))
    return guided_filter(image, prob, r, eps, subsample) > 0.5
