"""The benchmark's input: a real clip looped to any length, decoded frame by frame, and a first-frame mask.

A frame folder (DAVIS layout: `JPEGImages/<seq>`, its mask in `Annotations/<seq>/<first frame>.png`) plays
forwards, then backwards, and so on, so the objects never jump; a video file restarts from its first frame.
Every frame is decoded when it is asked for, as a real video would be, so decoding is measured and memory does
not grow with the length. Without a mask file the first object is an ellipse in the middle of the frame; more
objects than the mask holds are added as ellipses at fixed places around it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..settings import from_env
from ..video.io import VideoError, iter_frames, probe
from ..video.masks import load_mask, object_ids

DAVIS_SEQUENCE = ("data", "davis2017-dev", "JPEGImages", "blackswan")
# Centres (x, y) of the extra objects, as fractions of the frame, away from the middle.
EXTRA_CENTRES = ((0.15, 0.2), (0.85, 0.2), (0.15, 0.8), (0.85, 0.8), (0.5, 0.12), (0.5, 0.88), (0.1, 0.5))


def default_clip() -> Path:
    """The DAVIS 2017 `blackswan` frames of the project's shared data (`$LLB_SHARED`, else ../shared)."""
    path = from_env().shared.joinpath(*DAVIS_SEQUENCE)
    if not path.is_dir():
        raise FileNotFoundError(f"no default clip at {path}: pass --clip (a frame folder or a video file)")
    return path


def _ellipse(labels: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], obj: int) -> None:
    h, w = labels.shape
    middle = (round(centre[0] * w), round(centre[1] * h))
    cv2.ellipse(labels, middle, (round(axes[0] * w), round(axes[1] * h)), 0, 0, 360, obj, -1)


@dataclass
class BenchClip:
    """A looping frame source with its first-frame label map."""

    path: Path
    mask: np.ndarray  # (H, W) uint8 object ids, at least one object
    width: int
    height: int
    files: tuple[Path, ...]  # a frame folder's images in order; empty for a video file

    @classmethod
    def open(cls, path: str | os.PathLike[str], mask: str | os.PathLike[str] | None = None) -> BenchClip:
        """A frame folder or video file; the mask is `mask`, the DAVIS annotation beside a frame folder, or an
        ellipse in the middle."""
        path = Path(path)
        info = probe(path)
        if mask is None and path.is_dir() and path.parent.name == "JPEGImages":
            davis = path.parent.parent / "Annotations" / path.name / f"{info.frame_names[0]}.png"
            mask = davis if davis.exists() else None
        if mask is not None:
            labels = load_mask(mask, size=(info.width, info.height))
        else:
            labels = np.zeros((info.height, info.width), np.uint8)
            _ellipse(labels, (0.5, 0.5), (0.12, 0.18), 1)
        files: tuple[Path, ...] = ()
        if path.is_dir():
            by_stem = {p.stem: p for p in path.iterdir()}
            files = tuple(by_stem[name] for name in info.frame_names)
        return cls(path, labels, info.width, info.height, files)

    def first_mask(self, objects: int) -> np.ndarray:
        """The first frame's labels with exactly `objects` objects: the mask's first ones, then ellipses."""
        ids = object_ids(self.mask)
        labels = np.where(np.isin(self.mask, ids[:objects]), self.mask, 0).astype(np.uint8)
        extra = objects - min(objects, len(ids))
        if extra > len(EXTRA_CENTRES):
            raise ValueError(f"at most {len(ids) + len(EXTRA_CENTRES)} objects on this clip, {objects} asked for")
        drawn = np.zeros_like(labels)
        for k, centre in enumerate(EXTRA_CENTRES[:extra]):
            _ellipse(drawn, centre, (0.06, 0.08), max(ids, default=0) + 1 + k)
        labels = np.where(labels > 0, labels, drawn)
        if len(object_ids(labels)) != objects:
            raise ValueError(f"the clip's mask leaves no room for {objects} objects: choose fewer")
        return labels

    def frames(self, n: int) -> Iterator[np.ndarray]:
        """`n` RGB frames, the clip looped, each decoded when asked for."""
        if self.files:
            last = len(self.files) - 1
            order = [*range(last + 1), *range(last - 1, 0, -1)]
            for i in range(n):
                path = self.files[order[i % len(order)]]
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise VideoError(f"unreadable frame {path}")
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return
        produced = 0
        while produced < n:
            before = produced
            for frame in iter_frames(self.path, stop=n - produced):
                yield frame
                produced += 1
            if produced == before:
                raise VideoError(f"{self.path} has no decodable frame")
