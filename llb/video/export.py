"""The one exporter of a propagation's results: each output is a sink written as the frames stream (palette
PNGs, the overlay video, a zip of masks, the cut-out video and its RGBA PNGs, a YouTube-VOS submission), and an
`Exporter` hands every frame to its sinks, on a background thread by default, so that nothing is read back
from disk to be drawn."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from llb.video.io import DEFAULT_FPS, VideoWriter
from llb.video.masks import overlay, save_palette_png

TRANSPARENT = "transparent background"
CUTOUTS = ("none", "remove background", "blur background", TRANSPARENT)


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


def shown(frame: np.ndarray, labels: np.ndarray, warning: str | None) -> np.ndarray:
    """The overlay of one frame as the person sees it (stamped for an untrained network)."""
    out = overlay(frame, labels)
    return stamp(out, warning) if warning else out


def cutout(frame: np.ndarray, labels: np.ndarray, mode: str) -> np.ndarray:
    """The objects on a black or blurred background (RGB), or on a transparent one (RGBA)."""
    keep = (labels > 0)[..., None]
    if mode == TRANSPARENT:  # transparent pixels are black too, so that PNGs and WebM stay small
        return np.concatenate([frame * keep, keep.astype(np.uint8) * 255], axis=2)
    if mode == "blur background":
        k = max(3, (min(frame.shape[:2]) // 20) | 1)
        background = cv2.GaussianBlur(frame, (k, k), 0)
    else:
        background = np.zeros_like(frame)
    return np.where(keep, frame, background)


def stamped_cutout(cut: np.ndarray, warning: str | None) -> np.ndarray:
    """A cut-out (RGB, or RGBA: the banner is made opaque) with the warning banner, if there is a warning."""
    if not warning:
        return cut
    rgb = stamp(cut[..., :3], warning)
    if cut.shape[2] == 3:
        return rgb
    alpha = np.where((rgb != cut[..., :3]).any(axis=2), 255, cut[..., 3]).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def png(image: np.ndarray, labels: bool = False) -> bytes:
    """PNG bytes of an RGB(A) image, or of a label map as a DAVIS palette PNG (`labels`)."""
    buffer = io.BytesIO()
    if labels:
        save_palette_png(buffer, image)
    else:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class Frame:
    """One frame to export: `name` (its files' stem), `rgb` (H, W, 3) uint8, `labels` object ids (H, W) uint8,
    and, where the source has them, the merged probabilities `probs` (K, H, W) float32 of objects `ids`."""

    name: str
    rgb: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None = None
    ids: list[int] | None = None


class Sink(Protocol):
    """One output: written frame by frame, then closed; `ok` False (an error, or no frame) drops what can be
    dropped (a partial video or zip)."""

    def write(self, frame: Frame) -> None: ...

    def close(self, ok: bool) -> None: ...


class PaletteFolder:
    """`folder/<name>.png`, a DAVIS palette PNG per frame (what the benchmarks read)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, frame: Frame) -> None:
        save_palette_png(self.folder / f"{frame.name}.png", frame.labels)

    def close(self, ok: bool) -> None:
        """The PNGs written stay (each is whole)."""


class OverlayVideo:
    """An H.264 video of the masks over their frames, stamped with `warning` (an untrained network)."""

    def __init__(self, path: Path, fps: float = DEFAULT_FPS, warning: str | None = None) -> None:
        self.video, self.warning = VideoWriter(path, fps), warning

    def write(self, frame: Frame) -> None:
        self.video.write(shown(frame.rgb, frame.labels, self.warning))

    def close(self, ok: bool) -> None:
        _finish(self.video, ok)


def _finish(video: VideoWriter, ok: bool) -> None:
    """Finish a video, or drop its partial file."""
    if ok:
        video.close()
    else:
        video.abort()


class Archive:
    """A zip written as frames stream (to a partial file, moved to `path` when closed whole): each frame's
    palette PNG as `<folder>/<name>.png`; `readme` is added last. `count` is the number of files put."""

    def __init__(self, path: Path, folder: str = "masks", *, readme: str | None = None, deflate: bool = False) -> None:
        self.path, self.folder, self.readme, self.count = path, folder, readme, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.partial")
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)

    def put(self, name: str, data: bytes) -> None:
        self._zip.writestr(name, data)
        self.count += 1

    def write(self, frame: Frame) -> None:
        self.put(f"{self.folder}/{frame.name}.png", png(frame.labels, labels=True))

    def part(self, folder: str) -> Sink:
        """A sink that puts frames under `folder` of this zip and leaves closing it to its owner (one zip,
        several streams: a YouTube-VOS submission)."""
        return _Part(self, folder)

    def close(self, ok: bool) -> None:
        if ok and self.readme is not None:
            self._zip.writestr("README.txt", self.readme)
        self._zip.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


@dataclass
class _Part:
    archive: Archive
    folder: str

    def write(self, frame: Frame) -> None:
        self.archive.put(f"{self.folder}/{frame.name}.png", png(frame.labels, labels=True))

    def close(self, ok: bool) -> None:
        """The archive's owner closes it."""


class CutoutVideo:
    """The objects on a black, blurred or (`TRANSPARENT`, a VP9 WebM with alpha) transparent background; with
    `rgba`, the transparent frames also go to that zip as `cutout/<name>.png`."""

    def __init__(
        self, path: Path, mode: str, fps: float = DEFAULT_FPS, warning: str | None = None, rgba: Path | None = None
    ) -> None:
        if mode not in CUTOUTS[1:]:
            raise ValueError(f"the cut-out is one of: {', '.join(CUTOUTS[1:])}")
        self.mode, self.warning = mode, warning
        self.video = VideoWriter(path, fps, alpha=mode == TRANSPARENT)
        self.rgba = Archive(rgba, "cutout") if rgba is not None else None

    def write(self, frame: Frame) -> None:
        cut = stamped_cutout(cutout(frame.rgb, frame.labels, self.mode), self.warning)
        self.video.write(cut)
        if self.rgba is not None:
            self.rgba.put(f"{self.rgba.folder}/{frame.name}.png", png(cut))

    def close(self, ok: bool) -> None:
        if self.rgba is not None:
            self.rgba.close(ok)
        _finish(self.video, ok)


class Exporter:
    """Hands each frame to every sink; nothing is held in memory.

    With `background` (the default) the sinks write on a thread, at most `QUEUE_FRAMES` frames behind, so that
    drawing and encoding overlap the next frames' computation; an error there is raised by the next `write` or
    by `close`, which waits for every frame to be written and then closes the sinks (dropping partial videos
    and zips when there was an error or no frame).
    """

    QUEUE_FRAMES = 4

    def __init__(self, sinks: Sequence[Sink], *, background: bool = True) -> None:
        self.sinks = list(sinks)
        self.frames = 0
        self._error: BaseException | None = None  # the background thread's first error
        self._reported = False
        self._queue: queue.Queue[Frame | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
            self._thread = threading.Thread(target=self._drain, name="llb-exporter", daemon=True)
            self._thread.start()

    def write(
        self,
        rgb: np.ndarray,
        labels: np.ndarray,
        name: str,
        probs: np.ndarray | None = None,
        ids: list[int] | None = None,
    ) -> None:
        """rgb (H, W, 3) uint8; labels (H, W) uint8; probs (K, H, W) of objects `ids` (copied when written in
        the background, so that the caller may reuse its arrays)."""
        self._raise()
        if self._queue is None:
            self._write(Frame(name, rgb, labels, probs, ids))
        else:
            copy = None if probs is None else np.array(probs)
            self._queue.put(Frame(name, np.array(rgb), np.array(labels), copy, None if ids is None else list(ids)))
        self.frames += 1

    def _write(self, frame: Frame) -> None:
        for sink in self.sinks:
            sink.write(frame)

    def _drain(self) -> None:
        """The background thread: writes queued frames until the end marker; after an error, drops the rest
        (so that the caller never waits on a full queue)."""
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def _raise(self) -> None:
        """Raise the background thread's error in the caller, once."""
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def close(self) -> None:
        """Wait for the queued frames, then close every sink (whole only when all frames were written)."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close(self.frames > 0 and self._error is None)
            except BaseException as exc:  # the first error is raised; the other sinks are still closed
                self._error = self._error or exc
        self._raise()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the exception already on its way out is the one to report
            self.close()


class ResultWriter(Exporter):
    """What `llb segment` and `llb bench` write: `out_dir/masks/<name>.png` and `out_dir/overlay.mp4`, stamped
    with `warning` (an untrained network)."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        fps: float = DEFAULT_FPS,
        *,
        warning: str | None = None,
        background: bool = True,
    ) -> None:
        out = Path(out_dir)
        sinks = [PaletteFolder(out / "masks"), OverlayVideo(out / "overlay.mp4", fps, warning)]
        super().__init__(sinks, background=background)
