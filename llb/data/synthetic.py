"""Synthetic training videos from still images (the paper's COCO stage; STCN/XMem's static stage).

A clip is a scene of layers that move: a background image (a still image with its objects, or a frame of a
real training video) under a smooth random camera motion (affine plus perspective, interpolated over the Q
frames), and zero to a few objects cut out of other images, pasted on top with their own motion, so that
they occlude the scene's objects and act as distractors. One visible object of frame 0 becomes the target;
every other object is background to the network. Each layer's pixels and labels go through the same matrix
(labels with nearest neighbour; pasted objects composite with their bilinear alpha and are labelled where it
is at least 1/2), so masks stay on their pixels. Then colour jitter, grey (5 %) and mirror per clip.

Static roots: a folder with `images/<stem>.jpg`, `masks/<stem>.png` (binary) and optionally `instances/`
(id maps, preferred), stems listed in `pairs.txt` (first column); or a folder of such folders (`static/`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .davis import VideoSequence, scan_video_root
from .layout import read_labels
from .sampler import AugmentConfig, ClipDataset, present_objects, read_rgb, to_gray


@dataclass
class MotionConfig:
    """Random motion of one layer over a clip: parameters at the start and the end, interpolated per frame."""

    rotation: float = 10.0  # degrees: start angle and change over the clip, each U(-r, r)
    scale: float = 0.15  # log-scale, start and change, each U(-s, s)
    translate: float = 0.1  # fraction of the canvas side, start and change
    shear: float = 0.05
    perspective: float = 0.1  # corner displacement scale of the projective terms


@dataclass
class SyntheticConfig:
    """Clips of Q frames at `size` (H, W) built from still images."""

    size: tuple[int, int] = (240, 432)
    num_frames: int = 4
    max_pasted: int = 3  # objects cut from other images and pasted on top (0..max_pasted)
    p_video_background: float = 0.3  # background taken from a real training video frame
    pasted_area: tuple[float, float] = (0.02, 0.2)  # a pasted object's box area, fraction of the canvas
    min_area: float = 0.01  # the target covers at least this fraction of frame 0
    max_area: float = 0.8  # ... and at most this fraction (not the whole picture)
    camera: MotionConfig = field(default_factory=MotionConfig)
    objects: MotionConfig = field(default_factory=lambda: MotionConfig(rotation=20.0, scale=0.25, translate=0.25))
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    frame_brightness: float = 0.05  # extra per-frame brightness change
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # p_gray and p_flip per clip
    max_tries: int = 50


@dataclass(frozen=True)
class StillImage:
    """A still image and its label file (binary mask or instance id map)."""

    image: Path
    labels: Path


def scan_static_root(root: str | Path) -> list[StillImage]:
    """Still images of one set (a folder with pairs.txt) or of every set under a folder."""
    root = Path(root)
    if not (root / "pairs.txt").is_file():
        subsets = sorted(p for p in root.iterdir() if (p / "pairs.txt").is_file()) if root.is_dir() else []
        if not subsets:
            raise FileNotFoundError(f"{root} holds no still-image set (no pairs.txt in it or in its subfolders)")
        return [item for sub in subsets for item in scan_static_root(sub)]
    labels_dir = root / "instances" if (root / "instances").is_dir() else root / "masks"
    items = []
    for line in (root / "pairs.txt").read_text().splitlines():
        if not line.strip():
            continue
        stem = line.split()[0]
        image = root / "images" / f"{stem}.jpg"
        labels = labels_dir / f"{stem}.png"
        if image.is_file() and labels.is_file():
            items.append(StillImage(image, labels))
    return items


def motion_matrices(
    rng: np.random.Generator, cfg: MotionConfig, center: tuple[float, float], extent: float, num_frames: int
) -> list[np.ndarray]:
    """Per-frame 3x3 matrices of a smooth random motion about `center`; `extent` sets the translation and
    perspective scale (pixels). Frame t interpolates the start and end parameters linearly."""

    def draw(span: float, n: int = 1) -> np.ndarray:
        return rng.uniform(-span, span, n)

    start = np.concatenate(
        [draw(cfg.rotation), draw(cfg.scale), draw(cfg.translate, 2), draw(cfg.shear, 2), draw(cfg.perspective, 2)]
    )
    end = start + np.concatenate(
        [draw(cfg.rotation), draw(cfg.scale), draw(cfg.translate, 2), draw(cfg.shear, 2), draw(cfg.perspective, 2)]
    )
    cx, cy = center
    out = []
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1)
        angle, log_s, tx, ty, shx, shy, px, py = (1 - f) * start + f * end
        a = math.radians(angle)
        s = math.exp(log_s)
        linear = (
            np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1.0, shx], [shy, 1.0]]) * s
        )
        m = np.eye(3)
        m[:2, :2] = linear
        m[:2, 2] = np.array([cx + tx * extent, cy + ty * extent]) - linear @ np.array([cx, cy])
        persp = np.eye(3)
        persp[2, :2] = np.array([px, py]) / (4 * extent)
        shift = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
        out.append(shift @ persp @ np.linalg.inv(shift) @ m)
    return out


def _normalise_projective(m: np.ndarray) -> np.ndarray:
    return m / m[2, 2]


class SyntheticClips(ClipDataset):
    """Synthetic clips from still images (and, as backgrounds, frames of real training videos)."""

    def __init__(
        self,
        static_roots: Sequence[str | Path],
        video_roots: Sequence[str | Path] = (),
        cfg: SyntheticConfig | None = None,
        seed: int = 0,
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(seed)
        self.cfg = cfg or SyntheticConfig()
        self.images = [item for root in static_roots for item in scan_static_root(root)]
        if not self.images:
            raise ValueError("no still image found for synthetic clips")
        self.videos: list[VideoSequence] = [seq for root in video_roots for seq in scan_video_root(root, exclude)]

    def make_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A scene and one of its objects that covers [min_area, max_area] of frame 0 as the target."""
        cfg = self.cfg
        for _ in range(cfg.max_tries):
            images, labels = self.render_scene(rng)
            area0 = np.bincount(labels[0].ravel(), minlength=256)[1:255] / labels[0].size
            ids = [i + 1 for i, a in enumerate(area0) if cfg.min_area <= a <= cfg.max_area]
            if ids:
                target = ids[rng.integers(len(ids))]
                return images, (labels == target).astype(np.uint8)
        raise RuntimeError(f"no usable synthetic clip in {cfg.max_tries} tries: check min_area/max_area")

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A background image (H, W, 3) and its label map (H, W): a still image or a video frame."""
        if self.videos and rng.random() < self.cfg.p_video_background:
            seq = self.videos[rng.integers(len(self.videos))]
            pos = sorted(seq.annotations)[rng.integers(len(seq.annotations))]
            labels = read_labels(seq.annotations[pos])
            labels[labels == 255] = 0
            return read_rgb(seq.frames[pos]), labels
        item = self.images[rng.integers(len(self.images))]
        return read_rgb(item.image), read_labels(item.labels)

    def _cutout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """One object of a random still image: its box region (h, w, 3) and its alpha (h, w) float32."""
        item = self.images[rng.integers(len(self.images))]
        labels = read_labels(item.labels)
        ids = present_objects(labels, 0.01 * labels.size)
        if not ids:
            return None
        mask = labels == ids[rng.integers(len(ids))]
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        image = read_rgb(item.image)
        return image[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.float32)

    def render_scene(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Q frames of a moving scene: images (Q, H, W, 3) uint8 and label maps (Q, H, W) uint8 of every
        object (the background image's, then the pasted ones)."""
        cfg = self.cfg
        out_h, out_w = cfg.size
        q = cfg.num_frames
        extent = float(max(out_h, out_w))
        center = ((out_w - 1) / 2, (out_h - 1) / 2)
        bg_image, bg_labels = self._background(rng)
        bg_labels = bg_labels.copy()
        bg_labels[bg_labels == 255] = 0

        # background covers the canvas, zoomed 1..1.5x at a random position, then the camera moves
        h, w = bg_labels.shape
        s = max(out_w / w, out_h / h) * rng.uniform(1.0, 1.5)
        ox = rng.uniform(min(0.0, out_w - w * s), 0.0)
        oy = rng.uniform(min(0.0, out_h - h * s), 0.0)
        cover = np.array([[s, 0.0, ox + 0.5 * s - 0.5], [0.0, s, oy + 0.5 * s - 0.5], [0.0, 0.0, 1.0]])
        camera = motion_matrices(rng, cfg.camera, center, extent, q)
        frames, labels = [], []
        for t in range(q):
            m = _normalise_projective(camera[t] @ cover)
            frames.append(cv2.warpPerspective(bg_image, m, (out_w, out_h), flags=cv2.INTER_LINEAR).astype(np.float32))
            labels.append(cv2.warpPerspective(bg_labels, m, (out_w, out_h), flags=cv2.INTER_NEAREST))

        next_id = int(bg_labels.max()) + 1
        for _ in range(rng.integers(0, cfg.max_pasted + 1)):
            cut = self._cutout(rng)
            if cut is None or next_id > 254:
                continue
            self._paste(rng, cut, next_id, camera, frames, labels)
            next_id += 1

        images = self._colour(rng, frames)
        labels = np.stack(labels)
        if rng.random() < cfg.augment.p_flip:
            images, labels = images[:, :, ::-1], labels[:, :, ::-1]
        return np.ascontiguousarray(images), np.ascontiguousarray(labels)

    def _paste(
        self,
        rng: np.random.Generator,
        cut: tuple[np.ndarray, np.ndarray],
        obj_id: int,
        camera: list[np.ndarray],
        frames: list[np.ndarray],
        labels: list[np.ndarray],
    ) -> None:
        """Composite a cut-out object into every frame (in place) with its own motion under the camera's."""
        cfg = self.cfg
        out_h, out_w = cfg.size
        image, alpha = cut
        h, w = alpha.shape
        s = math.sqrt(rng.uniform(*cfg.pasted_area) * out_h * out_w / (h * w))
        cx, cy = rng.uniform(0.15, 0.85) * out_w, rng.uniform(0.15, 0.85) * out_h
        place = np.array([[s, 0.0, cx - s * w / 2], [0.0, s, cy - s * h / 2], [0.0, 0.0, 1.0]])
        own = motion_matrices(rng, cfg.objects, (cx, cy), float(max(out_h, out_w)), len(frames))
        for t in range(len(frames)):
            m = _normalise_projective(camera[t] @ own[t] @ place)
            a = cv2.warpPerspective(alpha, m, (out_w, out_h), flags=cv2.INTER_LINEAR)[..., None]
            obj = cv2.warpPerspective(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR).astype(np.float32)
            frames[t] = frames[t] * (1 - a) + obj * a
            labels[t][a[..., 0] >= 0.5] = obj_id

    def _colour(self, rng: np.random.Generator, frames: list[np.ndarray]) -> np.ndarray:
        """Per clip brightness, contrast, saturation and grey; per frame a small brightness drift.

        frames: Q float (H, W, 3) -> (Q, H, W, 3) uint8."""
        cfg = self.cfg
        bright = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        saturation = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        gray = rng.random() < cfg.augment.p_gray
        out = []
        for frame in frames:
            x = frame * bright * rng.uniform(1 - cfg.frame_brightness, 1 + cfg.frame_brightness)
            x = (x - x.mean()) * contrast + x.mean()
            grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            x = grey[..., None] + (x - grey[..., None]) * saturation
            x = np.clip(x, 0, 255).astype(np.uint8)
            out.append(to_gray(x) if gray else x)
        return np.stack(out)
