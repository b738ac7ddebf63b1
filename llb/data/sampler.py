"""What both training sources share: per-sample RNGs, mini-sequence frame sampling, crop and augmentation.

A training clip is Q frames in temporal order with the mask of one target object: images (Q, 3, H, W) uint8
RGB and masks (Q, 1, H, W) float32 in {0, 1}. Clip number n is drawn from its own generator seeded by
(seed, n), so any DataLoader worker produces the same clip for n, and a resumed run continues the same stream
of data without saving worker state.

Geometry: one 3x3 matrix per frame maps source pixels to output pixels (pixel centres at integer
coordinates, OpenCV's convention). Images warp bilinearly, label maps with nearest neighbour through the same
matrix, so masks stay on their pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from llb.inference import crop
from llb.video.masks import overlay

VOID = 255
VIRTUAL_LENGTH = 1 << 40  # clips are drawn on demand: a dataset's "length" only bounds the sample numbers


@dataclass
class AugmentConfig:
    """The official training augmentations (LWL/JOINT/LLB): grayscale, flip, rotation, scale, brightness."""

    p_gray: float = 0.05  # per clip: every frame grey
    p_flip: float = 0.5  # per clip: every frame mirrored
    rotation: float = 15.0  # degrees, uniform in [-r, r]; drawn once for frame 0 and once for the later frames
    scale: float = 0.2  # factor exp(U(-s, s)); drawn like the rotation
    brightness: float = 0.2  # factor U(1 - b, 1 + b); drawn like the rotation


@dataclass
class ClipConfig:
    """Mini-sequences cut from real videos: Q frames, crops `crop_scale` x the target box, output size (H, W)."""

    size: tuple[int, int] = (240, 432)
    num_frames: int = 4
    max_gap: int = 100  # the Q frames lie within this many frames of the first one
    crop_scale: float = 5.0
    crop_follow: Literal["first", "previous"] = "first"  # crop around frame 0's box, or the previous frame's
    center_jitter: float = 1.0  # crop centre moves by U(-j/2, j/2) x sqrt(box area)
    scale_jitter: float = 0.25  # box sides scale by exp(N(0, j))
    min_area: float = 0.002  # the target covers at least this fraction of frame 0 (source and crop)
    max_tries: int = 50
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip `index` of a run seeded with `seed`."""
    return np.random.default_rng([seed, index])


class ClipDataset(Dataset):
    """Base of the clip sources: item n -> {"images": (Q, 3, H, W) uint8, "masks": (Q, 1, H, W) float32}.

    Subclasses implement `make_clip(rng)`; `__getitem__` seeds it from (seed, n).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def make_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One clip: images (Q, H, W, 3) uint8 RGB and masks (Q, H, W) uint8 in {0, 1}."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        images, masks = self.make_clip(sample_rng(self.seed, int(index)))
        return {
            "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            "masks": torch.from_numpy(masks[:, None].astype(np.float32)),
        }


class MixedClips(ClipDataset):
    """Clips drawn from several sources with given probabilities (e.g. videos plus synthetic clips)."""

    def __init__(self, sources: Sequence[ClipDataset], weights: Sequence[float], seed: int = 0) -> None:
        super().__init__(seed)
        if len(sources) != len(weights) or not sources:
            raise ValueError("MixedClips needs one weight per source and at least one source")
        total = float(sum(weights))
        self.sources = list(sources)
        self.probs = [w / total for w in weights]

    def make_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        source = self.sources[rng.choice(len(self.sources), p=self.probs)]
        return source.make_clip(rng)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def present_objects(labels: np.ndarray, min_pixels: float) -> list[int]:
    """Ids (not background, not void) with at least `min_pixels` pixels."""
    counts = np.bincount(labels.ravel(), minlength=256)
    return [i for i in range(1, VOID) if counts[i] >= max(min_pixels, 1)]


def sample_later_frames(
    rng: np.random.Generator, annotated: Sequence[int], start: int, count: int, max_gap: int
) -> list[int]:
    """`count` annotated frame numbers after `start` and within `max_gap` of it, in temporal order.

    Drawn without repetition where enough exist, otherwise with repetition (short or sparse videos).
    Raises ValueError when no annotated frame follows `start` within the gap.
    """
    later = [a for a in annotated if start < a <= start + max_gap]
    if not later:
        raise ValueError(f"no annotated frame within {max_gap} frames after frame {start}")
    picked = rng.choice(later, size=count, replace=len(later) < count)
    return sorted(int(i) for i in picked)


def start_frames(annotated: Sequence[int], max_gap: int, later: int = 1) -> list[int]:
    """Annotated frames followed by at least `later` annotated frames within `max_gap` (where none is, by at
    least one: short videos then repeat frames)."""
    ordered = sorted(annotated)
    for need in (later, 1):
        starts = [a for i, a in enumerate(ordered) if i + need < len(ordered) and ordered[i + need] - a <= max_gap]
        if starts:
            return starts
    return []


def mask_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Box of a binary mask (H, W) as the tracker computes it (llb.inference.crop.mask_box, in float64): centre
    (x, y) and size (w, h) in continuous coordinates. None for an empty mask."""
    if not mask.any():
        return None
    center, size = crop.mask_box(torch.from_numpy(mask.astype(np.float64))[None])
    return center[0].numpy(), size[0].numpy()


def search_region(
    center: np.ndarray, size: np.ndarray, image_hw: tuple[int, int], out_hw: tuple[int, int], scale: float
) -> np.ndarray:
    """Crop box (x0, y0, x1, y1) around a target box, by the inference crop's rules and code
    (llb.inference.crop.search_region, in float64)."""
    cfg = crop.CropConfig(size=out_hw, scale=scale)
    as_row = [torch.as_tensor(np.asarray(v, np.float64))[None] for v in (center, size)]
    return crop.search_region(*as_row, image_hw, cfg)[0].numpy()


def jitter_box(
    rng: np.random.Generator, center: np.ndarray, size: np.ndarray, center_jitter: float, scale_jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """pytracking's box jitter: sides x exp(N(0, scale_jitter)), centre + U(-1/2, 1/2) x jitter x sqrt(area)."""
    size = size * np.exp(rng.normal(0.0, scale_jitter, 2))
    offset = math.sqrt(float(size[0] * size[1])) * center_jitter
    return center + offset * (rng.random(2) - 0.5), size


def crop_matrix(box: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix taking source pixel centres to output pixel centres so that `box` fills the output."""
    out_h, out_w = out_hw
    sx, sy = out_w / (box[2] - box[0]), out_h / (box[3] - box[1])
    return np.array(
        [[sx, 0.0, (0.5 - box[0]) * sx - 0.5], [0.0, sy, (0.5 - box[1]) * sy - 0.5], [0.0, 0.0, 1.0]],
    )


def similarity_about(center: tuple[float, float], angle_deg: float, scale: float, flip: bool) -> np.ndarray:
    """3x3 rotation by `angle_deg`, scaling and optional horizontal mirror about `center` (x, y)."""
    cx, cy = center
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) * scale, math.sin(a) * scale
    mirror = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return back @ mirror @ rot @ to_origin


def warp(
    image: np.ndarray, labels: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image (H, W, 3) and its label map (H, W) through one 3x3 matrix into `out_hw`.

    A strong reduction first shrinks the source with area averaging (image) and nearest neighbour (labels),
    so the crop is not aliased; outside the source reads black and background.
    """
    out_h, out_w = out_hw
    zoom = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    if zoom < 0.5:
        factor = 2 * zoom
        h, w = image.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        fx, fy = size[0] / w, size[1] / h
        shrink = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ np.linalg.inv(shrink)
    flags = cv2.BORDER_CONSTANT
    out = cv2.warpPerspective(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=flags)
    lab = cv2.warpPerspective(labels, matrix, (out_w, out_h), flags=cv2.INTER_NEAREST, borderMode=flags)
    return out, lab


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) -> the same image in grey, still 3 channels."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def scale_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """RGB uint8 x factor, clipped."""
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def preview_grid(clips: Sequence[dict[str, torch.Tensor]], path: str | Path | None = None) -> np.ndarray:
    """Tile clips (one per row, frames left to right) with the target mask drawn over each frame.

    Returns the grid (H', W', 3) uint8 RGB and writes it as PNG when `path` is given.
    """
    rows = []
    for clip in clips:
        images = clip["images"].permute(0, 2, 3, 1).numpy()
        masks = clip["masks"][:, 0].numpy().astype(np.uint8)
        tiles = [
            np.pad(overlay(img, m, alpha=0.45), ((2, 2), (2, 2), (0, 0)), constant_values=255)
            for img, m in zip(images, masks)
        ]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")
    return grid
