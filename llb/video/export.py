"""Writing a propagation's results: DAVIS palette PNGs per frame and an H.264 overlay video, as a stream."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
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

    `warning`, when given, is stamped on every overlay frame (e.g. for an untrained network). With `background`
    (the default) the frames are drawn and encoded on a thread, at most `QUEUE_FRAMES` behind, so that the
    encoding overlaps the next frames' computation; an error there is raised by the next `write` or by `close`,
    which waits for every frame to be written.
    """

    QUEUE_FRAMES = 4

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        fps: float = DEFAULT_FPS,
        *,
        masks: bool = True,
        video: bool = True,
        warning: str | None = None,
        background: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.mask_dir = self.out_dir / "masks" if masks else None
        if self.mask_dir is not None:
            self.mask_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.video = VideoWriter(self.out_dir / "overlay.mp4", fps) if video else None
        self.warning = warning
        self.frames = 0
        self._error: BaseException | None = None  # the background thread's first error
        self._reported = False
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray, str] | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
            self._thread = threading.Thread(target=self._drain, name="llb-result-writer", daemon=True)
            self._thread.start()

    def write(self, frame: np.ndarray, labels: np.ndarray, name: str) -> None:
        """frame: RGB (H, W, 3) uint8; labels: object ids (H, W) uint8 (copied when written in the background)."""
        self._raise()
        if self._queue is None:
            self._write(frame, labels, name)
        else:
            self._queue.put((np.array(frame), np.array(labels), name))
        self.frames += 1

    def _write(self, frame: np.ndarray, labels: np.ndarray, name: str) -> None:
        if self.mask_dir is not None:
            save_palette_png(self.mask_dir / f"{name}.png", labels)
        if self.video is not None:
            shown = overlay(frame, labels)
            self.video.write(stamp(shown, self.warning) if self.warning else shown)

    def _drain(self) -> None:
        """The background thread: writes queued frames until the end marker; after an error, drops the rest
        (so that the caller never waits on a full queue)."""
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def _raise(self) -> None:
        """Raise the background thread's error in the caller, once."""
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def close(self) -> None:
        """Wait for the queued frames, then finish the video (or drop it when nothing, or not all, was written)."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.video is not None and self.frames and self._error is None:
            self.video.close()
        elif self.video is not None:
            self.video.abort()
        self._raise()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the exception already on its way out is the one to report
            self.close()
