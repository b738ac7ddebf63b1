"""Writing a propagation's results: DAVIS palette PNGs per frame and an H.264 overlay video, as a stream."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from llb.video.io import DEFAULT_FPS, VideoWriter
from llb.video.masks import overlay, save_palette_png


def stamp(frame: np.ndarray, text: str) -> np.ndarray:
    """Burn a warning banner into the top of a frame (used for output of an untrained network)."""
    out = frame.copy()
    w = out.shape[1]
    unit_width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0]
    scale = min(max(0.4, w / 1400), 0.95 * (w - 8) / unit_width)  # whole on narrow frames too
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = th + base + 8
    out[:band] = (out[:band] * 0.3).astype(np.uint8)
    org = (max(4, (w - tw) // 2), th + 4)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 64, 64), thickness, cv2.LINE_AA)
    return out


class ResultWriter:
    """Streams results to `out_dir/masks/<name>.png` and `out_dir/overlay.mp4`; nothing is held in memory.

    `warning`, when given, is stamped on every overlay frame (e.g. for an untrained network).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        fps: float = DEFAULT_FPS,
        *,
        masks: bool = True,
        video: bool = True,
        warning: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.mask_dir = self.out_dir / "masks" if masks else None
        if self.mask_dir is not None:
            self.mask_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.video = VideoWriter(self.out_dir / "overlay.mp4", fps) if video else None
        self.warning = warning
        self.frames = 0

    def write(self, frame: np.ndarray, labels: np.ndarray, name: str) -> None:
        """frame: RGB (H, W, 3) uint8; labels: object ids (H, W) uint8."""
        if self.mask_dir is not None:
            save_palette_png(self.mask_dir / f"{name}.png", labels)
        if self.video is not None:
            shown = overlay(frame, labels)
            self.video.write(stamp(shown, self.warning) if self.warning else shown)
        self.frames += 1

    def close(self) -> None:
        if self.video is not None and self.frames:
            self.video.close()
        elif self.video is not None:
            self.video.abort()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
