"""Edge-aware refinement of a probability map at full resolution: the colour guided filter (He, Sun and Tang,
"Guided Image Filtering", ECCV 2010 / TPAMI 2013).

The click model predicts at its working size (384 px on the longer side, finest detail at stride 2); upsampled
to the frame, its boundaries are a few pixels soft. The guided filter fits, in every (2r+1)^2 window, the
probability as an affine function of the RGB colour, q = a . I + b, and averages the fits: where the image has an
edge, the refined probability takes it. OpenCV's own version lives in opencv-contrib (`cv2.ximgproc`), which
`rembg`'s pin on `opencv-python-headless` keeps out, so the few box filters are written here.
"""

from __future__ import annotations

import cv2
import numpy as np

RADIUS = 0.01  # window radius, as a fraction of the longer image side
EPS = 1e-3  # regularisation of a: larger smooths more (colours in 0..1)


def _mean(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(image: np.ndarray, prob: np.ndarray, radius: int, eps: float = EPS) -> np.ndarray:
    """Colour guided filter: image (H, W, 3) uint8 RGB guide, prob (H, W) float -> (H, W) float32."""
    guide = image.astype(np.float32) / 255
    p = prob.astype(np.float32)
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
    return (_mean(a, radius) * guide).sum(-1) + _mean(b, radius)


def refine_mask(image: np.ndarray, logits: np.ndarray, radius: float = RADIUS, eps: float = EPS) -> np.ndarray:
    """Logits (H, W) at the image's size -> (H, W) bool: sigmoid, guided filter on `image`, threshold 0.5."""
    prob = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    r = max(1, round(radius * max(image.shape[:2])))
    return guided_filter(image, prob, r, eps) > 0.5
