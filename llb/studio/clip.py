"""Turning an upload (video, gif, or a zip of frames) into the clip the app works on: frames decoded once,
trimmed and downscaled to the limits, stored as JPEG files with an H.264 preview, and a notice that says
exactly what was changed."""

from __future__ import annotations

import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from llb.video.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError, VideoWriter, iter_frames, probe, scaled_size

from .settings import Settings

UPLOAD_TYPES = (*VIDEO_SUFFIXES, ".zip")


@dataclass(frozen=True)
class Clip:
    """The prepared clip: `folder` holds `00000.jpg`...; `preview` is the same frames as H.264."""

    folder: Path
    preview: Path
    fps: float
    num_frames: int
    width: int
    height: int
    source: str
    notice: str

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


def _unzip_frames(archive: Path, dest: Path, settings: Settings) -> Path:
    """Extract the image files of a zip into one flat folder (names only, so no path leaves `dest`)."""
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
                raise VideoError(f"no frames: {archive.name} holds no JPEG/PNG images")
            if len(members) > settings.max_archive_frames:
                raise VideoError(
                    f"{archive.name} holds {len(members)} images; at most {settings.max_archive_frames} are read "
                    "(LLB_MAX_ARCHIVE_FRAMES): zip fewer frames"
                )
            if sum(m.file_size for m in members) > 8 * settings.max_upload_mb * 2**20:
                raise VideoError(f"{archive.name} unpacks to more than {8 * settings.max_upload_mb} MB")
            dest.mkdir(parents=True)
            for m in members:
                with zf.open(m) as src, open(dest / PurePosixPath(m.filename).name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as err:
        raise VideoError(f"{archive.name} is not a readable zip archive ({err})") from err
    return dest


def prepare_clip(upload: str | Path, workdir: Path, settings: Settings) -> Clip:
    """Decode `upload` into `workdir/clip-*/`; VideoError with a message for the person on bad input."""
    upload = Path(upload)
    if not upload.is_file():
        raise VideoError("the upload did not arrive; please upload the file again")
    suffix = upload.suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise VideoError(
            f"{upload.name}: unsupported file type '{suffix or 'none'}'; upload a video "
            f"({', '.join(s[1:] for s in VIDEO_SUFFIXES)}) or a zip of JPEG/PNG frames"
        )
    size_mb = upload.stat().st_size / 2**20
    if size_mb > settings.max_upload_mb:
        raise VideoError(
            f"{upload.name} is {size_mb:.0f} MB; the limit is {settings.max_upload_mb} MB (LLB_MAX_UPLOAD_MB)"
        )
    for old in workdir.glob("clip-*"):
        shutil.rmtree(old, ignore_errors=True)
    base = workdir / f"clip-{uuid.uuid4().hex[:8]}"
    source = _unzip_frames(upload, base / "unzipped", settings) if suffix == ".zip" else upload
    info = probe(source)
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
    if suffix == ".zip":
        shutil.rmtree(base / "unzipped", ignore_errors=True)
    notes = []
    if count < info.num_frames:
        notes.append(
            f"Trimmed: the video has {info.num_frames} frames ({_duration(info.num_frames, info.fps)} at "
            f"{info.fps:g} fps); the first {count} frames ({_duration(count, info.fps)}) are used "
            f"(limit LLB_MAX_FRAMES={settings.max_frames})."
        )
    if (width, height) != (info.width, info.height):
        notes.append(
            f"Downscaled: frames are {info.width}x{info.height}; they are processed at {width}x{height} "
            f"(limit LLB_MAX_SIDE={settings.max_side} px on the longer side)."
        )
    return Clip(folder, base / "input.mp4", info.fps, count, width, height, upload.name, " ".join(notes))
