"""Turning an upload (video, gif, or a zip of frames) into the clip the app works on: frames decoded once,
trimmed and downscaled to the limits, stored as JPEG files with an H.264 preview, and a notice that says
exactly what was changed."""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image

from llb.video.io import (
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    UPLOAD_HINT,
    VIDEO_FORMATS,
    VIDEO_SUFFIXES,
    VideoError,
    VideoWriter,
    iter_frames,
    natural_key,
    probe,
    scaled_size,
)

from .settings import Settings

UPLOAD_TYPES = (*VIDEO_SUFFIXES, ".zip")
# What the upload box accepts, in the video layer's words: its label and every message about a refused upload say
# the same (the reader's hint names a folder of frames; an upload is a zip of them).
UPLOAD_FORMATS = f"{VIDEO_FORMATS} or a zip of {IMAGE_FORMATS} frames"
MAX_FRAME_PIXELS = 2 * 7680 * 4320  # a zipped frame larger than this (two 8K frames) is refused unread


@dataclass(frozen=True)
class Clip:
    """The prepared clip: `folder` holds `00000.jpg`...; `preview` is the same frames as H.264.

    `original` is the upload as it came (a video file, or the folder of a zip's frames), kept so that results can
    be exported at its `original_size` (width, height) with its sound; its first `num_frames` frames are the clip.
    """

    folder: Path
    preview: Path
    fps: float
    num_frames: int
    width: int
    height: int
    source: str
    notice: str
    original: Path | None = None
    original_size: tuple[int, int] | None = None

    def frame_path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.jpg"

    def frame(self, index: int) -> np.ndarray:
        """RGB uint8 of frame `index`."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside the clip (0..{self.num_frames - 1})")
        return cv2.cvtColor(cv2.imread(str(self.frame_path(index))), cv2.COLOR_BGR2RGB)


def _duration(frames: int, fps: float) -> str:
    seconds = frames / fps
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}" if seconds >= 60 else f"{seconds:.1f} s"


def _member_name(member: zipfile.ZipInfo) -> str:
    return PurePosixPath(member.filename).name


def _unzip_frames(archive: Path, dest: Path, settings: Settings) -> int:
    """Extract the first `max_frames` image files of a zip (in frame order) into one flat folder (names only, so
    no path leaves `dest`); the number of images in the archive.

    A zip bomb stops before it writes: each member's declared size is checked against `max_frame_mb`, and the
    copy is streamed and cut off at that size whatever the header says."""
    cap = settings.max_frame_mb * 2**20
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [
                m
                for m in zf.infolist()
                if not m.is_dir()
                and PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
                and not any(p.startswith((".", "__MACOSX")) for p in PurePosixPath(m.filename).parts)
            ]
            if not members:
                raise VideoError(f"no frames: {archive.name} holds no {IMAGE_FORMATS} images")
            if len(members) > settings.max_archive_frames:
                raise VideoError(
                    f"{archive.name} holds {len(members)} images; at most {settings.max_archive_frames} are read "
                    "(LLB_MAX_ARCHIVE_FRAMES): zip fewer frames"
                )
            members.sort(key=lambda m: natural_key(_member_name(m)))
            for m in members[: settings.max_frames]:
                if m.file_size > cap:
                    raise VideoError(
                        f"{_member_name(m)} unpacks to {m.file_size / 2**20:.0f} MB; a frame may take at most "
                        f"{settings.max_frame_mb} MB (LLB_MAX_FRAME_MB): zip JPEG or PNG frames"
                    )
            dest.mkdir(parents=True)
            for m in members[: settings.max_frames]:
                with zf.open(m) as src, open(dest / _member_name(m), "wb") as out:
                    left = cap
                    while chunk := src.read(min(2**20, left + 1)):
                        left -= len(chunk)
                        if left < 0:
                            raise VideoError(f"{_member_name(m)} unpacks to more than {settings.max_frame_mb} MB")
                        out.write(chunk)
                _check_pixels(dest / _member_name(m))
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise VideoError(f"{archive.name} is not a readable zip archive ({err})") from err
    return len(members)


def _check_pixels(path: Path) -> None:
    """Refuse an image whose header declares more pixels than `MAX_FRAME_PIXELS` (read without decoding it)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, Image.DecompressionBombError):
        return  # not an image PIL knows: decoding it later says what is wrong
    if width * height > MAX_FRAME_PIXELS:
        raise VideoError(f"{path.name} is {width}x{height} pixels; frames of up to 8K ({MAX_FRAME_PIXELS:,}) are read")


def prepare_clip(upload: str | Path, workdir: Path, settings: Settings) -> Clip:
    """Decode `upload` into `workdir/clip-*/`; VideoError with a message for the person on bad input."""
    upload = Path(upload)
    if not upload.is_file():
        raise VideoError("the upload did not arrive; please upload the file again")
    suffix = upload.suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise VideoError(f"{upload.name}: unsupported file type '{suffix or 'none'}'; upload {UPLOAD_FORMATS}")
    size_mb = upload.stat().st_size / 2**20
    if size_mb > settings.max_upload_mb:
        raise VideoError(
            f"{upload.name} is {size_mb:.0f} MB; the limit is {settings.max_upload_mb} MB (LLB_MAX_UPLOAD_MB)"
        )
    base = workdir / f"clip-{uuid.uuid4().hex[:8]}"
    try:
        return _decode(upload, base, settings)
    except BaseException as err:
        shutil.rmtree(base, ignore_errors=True)  # nothing of a failed upload stays on disk
        if isinstance(err, VideoError) and str(err).endswith(UPLOAD_HINT):  # the reader's hint: the box's formats
            raise VideoError(f"{str(err).removesuffix(UPLOAD_HINT)}upload {UPLOAD_FORMATS}") from err
        raise


def _decode(upload: Path, base: Path, settings: Settings) -> Clip:
    """The frames of `upload` as JPEG files and an H.264 preview under `base`."""
    suffix = upload.suffix.lower()
    total = None
    if suffix == ".zip":
        total = _unzip_frames(upload, base / "unzipped", settings)
        source = base / "unzipped"
    else:
        source = upload
    info = probe(source)
    total = total or info.num_frames
    width, height = scaled_size(info.width, info.height, settings.max_side)
    folder = base / "frames"
    folder.mkdir(parents=True)
    count = 0
    with VideoWriter(base / "input.mp4", info.fps) as preview:
        for frame in iter_frames(source, stop=settings.max_frames, max_side=settings.max_side):
            if frame.shape[:2] != (height, width):  # a rotated or oddly sized frame: bring it to the first's size
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{count:05d}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            preview.write(frame)
            count += 1
        if count == 0:
            raise VideoError(f"no frames: {upload.name} has no decodable frame (corrupt or empty?)")
    original = source if suffix == ".zip" else base / f"original{suffix}"
    if original != source:
        try:
            os.link(upload, original)  # no copy where the upload lies on the same file system
        except OSError:
            shutil.copyfile(upload, original)
    notes = []
    if count < total:
        notes.append(
            f"Trimmed: the video has {total} frames ({_duration(total, info.fps)} at "
            f"{info.fps:g} fps); the first {count} frames ({_duration(count, info.fps)}) are used "
            f"(limit LLB_MAX_FRAMES={settings.max_frames})."
        )
    if (width, height) != (info.width, info.height):
        notes.append(
            f"Downscaled: frames are {info.width}x{info.height}; they are processed at {width}x{height} "
            f"(limit LLB_MAX_SIDE={settings.max_side} px on the longer side); results are exported at "
            f"{info.width}x{info.height}."
        )
    size = (info.width, info.height)
    return Clip(
        folder, base / "input.mp4", info.fps, count, width, height, upload.name, " ".join(notes), original, size
    )
