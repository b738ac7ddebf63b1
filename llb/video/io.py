"""Reading uploads (video files or frame folders) as RGB frames, and writing browser-playable H.264 mp4.

One reader for every container: OpenCV's FFmpeg backend decodes mp4, webm, mov, avi, mkv and gif (imageio's
ffmpeg reader cannot open gif). OpenCV's own writer has no H.264 in the PyPI wheels and its `mp4v` output does
not play in Chromium, so writing goes through imageio-ffmpeg's bundled ffmpeg and libx264 instead (VP9 with an
alpha plane for transparent WebM), and the same binary copies a source's audio track into a written video.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FPS = 24.0

# The readable formats in words, built from the suffixes so that no message or help text lists other ones;
# the app's upload box (a zip of frames instead of a folder) and the CLI's help take them from here.
VIDEO_FORMATS = f"a video ({', '.join(s[1:] for s in VIDEO_SUFFIXES)})"
IMAGE_FORMATS = "/".join(s[1:] for s in IMAGE_SUFFIXES)
UPLOAD_HINT = f"upload {VIDEO_FORMATS} or a folder of {IMAGE_FORMATS} frames"

Source = str | os.PathLike[str] | Iterable[np.ndarray]
log = logging.getLogger(__name__)


class VideoError(ValueError):
    """A video, frame folder or frame array that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a source without decoding all of it."""

    path: str
    fps: float
    num_frames: int
    width: int
    height: int
    frame_names: tuple[str, ...]


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (the system may have none)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so the longer side is at most `max_side`; never enlarged."""
    _check_max_side(max_side)
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural order; hidden files are skipped, duplicate stems rejected."""
    files = [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise VideoError(f"no frames: the folder {folder} holds no {IMAGE_FORMATS} images; {UPLOAD_HINT}")
    files.sort(key=lambda p: natural_key(p.name))
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise VideoError(
            f"ambiguous frames: {folder} holds several images named {dup!r} with different extensions; "
            "keep one file per frame"
        )
    return files


def _read_image(path: Path) -> np.ndarray:
    """One frame file as RGB uint8 (alpha dropped, grey expanded); VideoError naming it if unreadable."""
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR) if path.stat().st_size else None
    if bgr is None:
        raise VideoError(f"unreadable frame: {path} could not be decoded; re-export it as JPEG or PNG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _open_capture(path: Path) -> cv2.VideoCapture:
    """An opened FFmpeg-backed capture, or VideoError saying the file is not a video."""
    if path.stat().st_size == 0:
        raise VideoError(f"empty file: {path.name} has 0 bytes (was the upload cut off?); {UPLOAD_HINT}")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"not a video: {path.name} could not be decoded; {UPLOAD_HINT}")
    return cap


def _check_path(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    if not path.exists():
        raise VideoError(f"no such file or folder: {path}; check the path or upload the video again")
    return path


def probe(source: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, frame count, size and frame names of a video file or a folder of frames.

    The first frame is decoded, so a file that is not a video fails here rather than later, and the size is
    that of the decoded (orientation-corrected) frames. For video files `num_frames` comes from the container
    and can be wrong (variable frame rate, damaged or truncated files): treat it as an estimate and let
    `iter_frames` be the truth. Frame folders have no frame rate; they, and videos without one, get 24 fps.
    """
    path = _check_path(source)
    if path.is_dir():
        files = _frame_files(path)
        first = _read_image(files[0])
        return VideoInfo(
            path=str(path),
            fps=DEFAULT_FPS,
            num_frames=len(files),
            width=first.shape[1],
            height=first.shape[0],
            frame_names=tuple(p.stem for p in files),
        )
    cap = _open_capture(path)
    try:
        ok, first = cap.read()
        if not ok or first is None:
            raise VideoError(f"not a video: {path.name} has no decodable frame (corrupt?); {UPLOAD_HINT}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # container does not say: count by demuxing without converting
            count = 1
            while cap.grab():
                count += 1
    finally:
        cap.release()
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        fps = DEFAULT_FPS
    digits = max(5, len(str(count - 1)))
    return VideoInfo(
        path=str(path),
        fps=float(fps),
        num_frames=count,
        width=first.shape[1],
        height=first.shape[0],
        frame_names=tuple(f"{i:0{digits}d}" for i in range(count)),
    )


def _check_array(frame: Any, index: int, channels: int = 3) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != channels:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        kind = "RGB" if channels == 3 else "RGBA"
        raise VideoError(f"bad frame {index}: expected an HxWx{channels} uint8 {kind} array, got {desc}")
    return frame


def _array_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    size: tuple[int, ...] | None = None
    for i, frame in enumerate(frames):
        frame = _check_array(frame, i)
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise VideoError(
                f"frame {i} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {size[1]}x{size[0]}; "
                "every frame must have the same size"
            )
        yield frame


def _folder_frames(folder: Path, start: int, stop: int | None) -> Iterator[np.ndarray]:
    files = _frame_files(folder)
    size = _read_image(files[0]).shape if start > 0 else None
    for path in files[start:stop]:
        frame = _read_image(path)
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise VideoError(
                f"frame size changes: {path.name} is {frame.shape[1]}x{frame.shape[0]} but the first frame "
                f"is {size[1]}x{size[0]}; export every frame at the same resolution"
            )
        yield frame


def _video_frames(path: Path, start: int, stop: int | None) -> Iterator[np.ndarray]:
    cap = _open_capture(path)
    try:
        for _ in range(start):
            if not cap.grab():
                return
        index = start
        while stop is None or index < stop:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def iter_frames(
    source: Source, *, start: int = 0, stop: int | None = None, max_side: int | None = None
) -> Iterator[np.ndarray]:
    """Stream frames `start`..`stop` (exclusive) of a video file, frame folder or iterable of arrays.

    Yields RGB uint8 HxWx3 arrays one at a time, never the whole video. With `max_side` each frame is shrunk
    (INTER_AREA, aspect kept) so its longer side is at most `max_side`. Bad arguments and a missing path raise
    at the call; a video that becomes undecodable part way through simply ends there (the frames before it are
    still good); a folder image whose size differs from the first, or an array that is not HxWx3 uint8, raises
    VideoError when it is reached.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    _check_max_side(max_side)
    frames: Iterator[np.ndarray]
    if isinstance(source, str | os.PathLike):
        path = _check_path(source)
        frames = _folder_frames(path, start, stop) if path.is_dir() else _video_frames(path, start, stop)
    else:
        frames = islice(_array_frames(source), start, stop)
    return _resized(frames, max_side)


def _resized(frames: Iterator[np.ndarray], max_side: int | None) -> Iterator[np.ndarray]:
    for frame in frames:
        height, width = frame.shape[:2]
        size = scaled_size(width, height, max_side)
        yield frame if size == (width, height) else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


class VideoWriter:
    """Write RGB frames to a browser-playable mp4 (H.264 High, yuv420p, moov atom first for streaming), or with
    `alpha`, RGBA frames to a transparent WebM (VP9, yuva420p; Chromium and Firefox play it with its alpha).

    Frames must all have the size of the first one. yuv420p needs even sizes, so an odd width or height is
    padded by one replicated edge pixel: a 321x241 input gives a 322x242 video (`size`). The file is written
    under a hidden temporary name beside `path` and renamed on `close()`, so a half-written video never
    appears under the final name; leaving the `with` block by an exception deletes the partial file.
    """

    def __init__(
        self, path: str | os.PathLike[str], fps: float = DEFAULT_FPS, *, crf: int | None = None, alpha: bool = False
    ) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.alpha = alpha
        self.crf = crf if crf is not None else 32 if alpha else 23  # VP9's crf scale is not x264's
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the encoded video
        self._input_shape: tuple[int, ...] | None = None
        suffix = ".webm" if alpha else ".mp4"
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.partial{suffix}")
        self._gen: Generator[None, Any, None] | None = None
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        self._input_shape = shape
        self.size = (width + width % 2, height + height % 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.alpha:  # realtime / cpu-used 8: VP9 is otherwise about ten times slower than x264
            codec, pix_in, pix_out = "libvpx-vp9", "rgba", "yuva420p"
            params = ["-b:v", "0", "-crf", str(self.crf), "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
        else:
            codec, pix_in, pix_out = "libx264", "rgb24", "yuv420p"
            params = ["-preset", "veryfast", "-crf", str(self.crf), "-movflags", "+faststart"]
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp),
            self.size,
            fps=self.fps,
            codec=codec,
            pix_fmt_in=pix_in,
            pix_fmt_out=pix_out,
            quality=None,
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=params,
        )
        self._gen.send(None)

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB uint8 HxWx3 frame (RGBA HxWx4 with `alpha`)."""
        if self._closed:
            raise RuntimeError(f"VideoWriter for {self.path} is already closed")
        frame = _check_array(rgb, self.frames_written, 4 if self.alpha else 3)
        if self._gen is None:
            self._start(frame.shape)
        elif frame.shape != self._input_shape:
            raise VideoError(
                f"frame {self.frames_written} is {frame.shape[1]}x{frame.shape[0]} but the video is "
                f"{self._input_shape[1]}x{self._input_shape[0]}; every frame must have the first frame's size"
            )
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        self._gen.send(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish encoding and move the file to `path`; VideoError if nothing was written or ffmpeg failed."""
        if self._closed:
            return
        self._closed = True
        if self._gen is None:
            raise VideoError(f"no frames were written to {self.path}; a video needs at least one frame")
        self._gen.close()
        if not self._tmp.exists() or self._tmp.stat().st_size == 0:
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"ffmpeg failed to write {self.path} (see its messages above)")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop encoding and delete the partial file; `path` is left untouched."""
        if self._closed:
            return
        self._closed = True
        if self._gen is not None:
            self._gen.close()
        self._tmp.unlink(missing_ok=True)


def has_audio(path: str | os.PathLike[str]) -> bool:
    """Whether a video file holds an audio stream (ffmpeg's description of its streams)."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", os.fspath(path)], capture_output=True, text=True)
    return any(line.lstrip().startswith("Stream #") and " Audio: " in line for line in out.stderr.splitlines())


def add_audio(video: str | os.PathLike[str], source: str | os.PathLike[str], start: float, duration: float) -> bool:
    """Copy `source`'s first audio track, from `start` seconds for `duration` seconds, into `video` (in place).

    The video stream is copied as it is; the audio is re-encoded (AAC in mp4, Opus in WebM) so that any source
    codec fits the container. False (and `video` unchanged) when the source has no audio or ffmpeg fails: a
    result without its sound is still a result, so the failure is logged, not raised.
    """
    video, source = Path(video), Path(source)
    if not source.is_file() or not has_audio(source):
        return False
    webm = video.suffix.lower() == ".webm"
    tmp = video.with_name(f".{video.stem}.{uuid.uuid4().hex[:8]}.audio{video.suffix}")
    cmd = [ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", "-i", str(video)]
    cmd += ["-ss", f"{start:.6f}", "-t", f"{duration:.6f}", "-i", str(source), "-map", "0:v:0", "-map", "1:a:0"]
    cmd += ["-c:v", "copy", "-c:a", "libopus" if webm else "aac", "-b:a", "128k"]
    cmd += [] if webm else ["-movflags", "+faststart"]
    out = subprocess.run([*cmd, str(tmp)], capture_output=True, text=True)
    if out.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        log.warning("the audio of %s could not be copied into %s: %s", source.name, video.name, out.stderr.strip())
        return False
    os.replace(tmp, video)
    return True
