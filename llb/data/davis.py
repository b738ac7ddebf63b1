"""Real training videos: DAVIS-format roots and the YouTube-VOS layout, cut into the paper's mini-sequences.

A root holds `JPEGImages/<seq>/<frame>.jpg` and `Annotations/<seq>/<frame>.png` (palette: 0 background, k
object k, 255 void), or the same under `480p/` (the official DAVIS tools), or under `train/` (YouTube-VOS).
Annotations may be sparse (YouTube-VOS annotates every 5th frame) and objects may appear late or vanish: a
clip starts on an annotated frame where its target is visible and takes its later frames among the annotated
ones; a target absent from a later frame has an empty mask there.

The DAVIS 2017 validation split is never training data: a root named `davis2017-dev` is refused, and
sequences of the DAVIS 2017 val set are dropped from any root (a full DAVIS trainval folder without
ImageSets/2017/train.txt keeps only its train sequences). Sequences named in `exclude` (a run's held-out
validation sequences) are dropped too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layout import Layout, frame_files, read_labels, read_names
from .sampler import (
    ClipConfig,
    ClipDataset,
    crop_matrix,
    jitter_box,
    mask_box,
    present_objects,
    read_rgb,
    sample_later_frames,
    scale_brightness,
    search_region,
    similarity_about,
    start_frames,
    to_gray,
    warp,
)

VALIDATION_ROOTS = ("davis2017-dev",)
DAVIS2017_VAL = frozenset(
    {
        "bike-packing",
        "blackswan",
        "bmx-trees",
        "breakdance",
        "camel",
        "car-roundabout",
        "car-shadow",
        "cows",
        "dance-twirl",
        "dog",
        "dogs-jump",
        "drift-chicane",
        "drift-straight",
        "goat",
        "gold-fish",
        "horsejump-high",
        "india",
        "judo",
        "kite-surf",
        "lab-coat",
        "libby",
        "loading",
        "mbike-trick",
        "motocross-jump",
        "paragliding-launch",
        "parkour",
        "pigs",
        "scooter-black",
        "shooting",
        "soapbox",
    }
)


@dataclass
class VideoSequence:
    """One video: frame files in order, their frame numbers, and annotation files by position in `frames`."""

    name: str
    frames: list[Path]
    numbers: list[int]
    annotations: dict[int, Path] = field(default_factory=dict)

    @property
    def annotated(self) -> list[int]:
        """Frame numbers that have an annotation, in order."""
        return [self.numbers[i] for i in sorted(self.annotations)]


def check_training_root(root: str | Path) -> Path:
    """Refuse the validation split (by folder name, also behind links); return the root as a Path."""
    root = Path(root)
    parts = {p.lower() for p in (*root.parts, *root.resolve().parts)}
    for name in VALIDATION_ROOTS:
        if name in parts:
            raise ValueError(f"{root} is {name}, the validation split: it is never used for training")
    return root


def scan_video_root(root: str | Path, exclude: Sequence[str] = ()) -> list[VideoSequence]:
    """The training sequences of a root with at least two annotated frames, but those named in `exclude`
    (see the module docstring)."""
    root = check_training_root(root)
    layout = Layout.find(root, ("train",))
    listed = layout.split_file("train")
    names = read_names(listed) if listed is not None else layout.names()
    sequences = []
    for folders in layout.sequences([n for n in names if n not in DAVIS2017_VAL and n not in exclude]):
        frames = frame_files(folders.frames)
        stems = [p.stem for p in frames]
        numbers = [int(s) for s in stems] if all(s.isdigit() for s in stems) else list(range(len(frames)))
        ann = {i: folders.annotations / f"{s}.png" for i, s in enumerate(stems)}
        ann = {i: p for i, p in ann.items() if p.is_file()}
        if len(ann) >= 2:
            sequences.append(VideoSequence(folders.name, frames, numbers, ann))
    if not sequences:
        raise ValueError(f"{root} holds no training sequence with two annotated frames (DAVIS 2017 val excluded)")
    return sequences


class VideoClips(ClipDataset):
    """Mini-sequences of Q frames from real videos (one target object per clip, others are background).

    Sequences are drawn uniformly over all roots (or by root with `weights`); the first frame is an annotated
    frame where some object covers `min_area` of the image; the target is one of those objects; the later
    frames are annotated frames within `max_gap`, in order. Each frame is cropped `crop_scale` times the
    jittered target box (frame 0's, or the previous frame's with `crop_follow="previous"`), then flipped,
    rotated, scaled, brightened and greyed as `cfg.augment` says (frame 0 and the later frames each draw
    their own rotation, scale and brightness).
    """

    def __init__(
        self,
        roots: Sequence[str | Path],
        cfg: ClipConfig | None = None,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(seed)
        self.cfg = cfg or ClipConfig()
        self.roots = [scan_video_root(r, exclude) for r in roots]
        sizes = [len(r) for r in self.roots]
        w = np.asarray(weights if weights is not None else sizes, dtype=np.float64)
        if len(w) != len(self.roots):
            raise ValueError(f"{len(self.roots)} video roots but {len(w)} weights")
        self.root_probs = w / w.sum()

    @property
    def sequences(self) -> list[VideoSequence]:
        return [s for r in self.roots for s in r]

    def make_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        for _ in range(cfg.max_tries):
            root = self.roots[rng.choice(len(self.roots), p=self.root_probs)]
            clip = self._try_clip(rng, root[rng.integers(len(root))])
            if clip is not None:
                return clip
        raise RuntimeError(f"no usable clip in {cfg.max_tries} tries: are the targets too small for min_area?")

    def _try_clip(self, rng: np.random.Generator, seq: VideoSequence) -> tuple[np.ndarray, np.ndarray] | None:
        cfg = self.cfg
        position = {n: i for i, n in enumerate(seq.numbers)}
        starts = start_frames(seq.annotated, cfg.max_gap, cfg.num_frames - 1)
        if not starts:
            return None
        start = int(rng.choice(starts))
        labels0 = read_labels(seq.annotations[position[start]])
        ids = present_objects(labels0, cfg.min_area * labels0.size)
        if not ids:
            return None
        target = int(rng.choice(ids))
        numbers = [start, *sample_later_frames(rng, seq.annotated, start, cfg.num_frames - 1, cfg.max_gap)]
        frames = [read_rgb(seq.frames[position[n]]) for n in numbers]
        labels = [labels0] + [read_labels(seq.annotations[position[n]]) for n in numbers[1:]]
        masks = [(lab == target).astype(np.uint8) for lab in labels]
        images, out_masks = augment_clip(rng, frames, masks, cfg)
        if out_masks[0].sum() < cfg.min_area * out_masks[0].size:
            return None
        return images, out_masks


def augment_clip(
    rng: np.random.Generator, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], cfg: ClipConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Crop and augment Q full frames (H, W, 3) with target masks (H, W) -> (Q, h, w, 3) and (Q, h, w).

    Frame 0's mask must not be empty. Returns uint8 arrays at `cfg.size`.
    """
    aug = cfg.augment
    out_hw = cfg.size
    flip = bool(rng.random() < aug.p_flip)
    gray = bool(rng.random() < aug.p_gray)
    splits = [_split_params(rng, cfg) for _ in range(2)]  # frame 0, later frames
    center, size = mask_box(masks[0])
    images, out_masks = [], []
    for t, (frame, mask) in enumerate(zip(frames, masks)):
        if t > 0 and cfg.crop_follow == "previous":
            box = mask_box(masks[t - 1])
            if box is not None:
                center, size = box
        if t == 0 or cfg.crop_follow == "previous":
            jc, js = jitter_box(rng, center, size, cfg.center_jitter, cfg.scale_jitter)
            region = search_region(jc, js, frame.shape[:2], out_hw, cfg.crop_scale)
        angle, scale, bright = splits[min(t, 1)]
        mid = ((out_hw[1] - 1) / 2, (out_hw[0] - 1) / 2)
        matrix = similarity_about(mid, angle, scale, flip) @ crop_matrix(region, out_hw)
        image, out_mask = warp(frame, mask, matrix, out_hw)
        image = scale_brightness(image, bright)
        images.append(to_gray(image) if gray else image)
        out_masks.append(out_mask)
    return np.stack(images), np.stack(out_masks)


def _split_params(rng: np.random.Generator, cfg: ClipConfig) -> tuple[float, float, float]:
    """(rotation in degrees, scale factor, brightness factor) for one group of frames."""
    aug = cfg.augment
    angle = float(rng.uniform(-aug.rotation, aug.rotation))
    scale = float(np.exp(rng.uniform(-aug.scale, aug.scale)))
    bright = float(rng.uniform(max(0.0, 1 - aug.brightness), 1 + aug.brightness))
    return angle, scale, bright
