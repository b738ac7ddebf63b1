"""Limits and switches of the app, read from the environment once, with defaults that keep a CPU Space
responsive (a short clip at a modest size); on a GPU the frame limit is higher."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
UNTRAINED = "UNTRAINED NETWORK - NOT A RESULT"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _size(name: str, default: tuple[int, int]) -> tuple[int, int]:
    """`WxH` -> (H, W); multiples of 16 (the network's stride)."""
    value = os.environ.get(name, "").lower().strip()
    if not value:
        return default
    w, h = (int(v) for v in value.split("x"))
    if w % 16 or h % 16:
        raise ValueError(f"{name}={value}: width and height must be multiples of 16")
    return h, w


@dataclass(frozen=True)
class Settings:
    """Everything configurable; see the README's App section for the variables."""

    max_frames: int  # longer clips are cut after this many frames
    max_side: int  # frames are downscaled so the longer side is at most this
    max_upload_mb: int
    max_archive_frames: int  # images read from an uploaded zip (before trimming)
    max_frame_mb: int  # a zip member (one frame) may unpack to at most this
    max_objects: int  # objects tracked in one run (each costs a pass per frame)
    crop_size: tuple[int, int]  # processing size (H, W) of the network's search region
    allow_untrained: bool  # development only: run a network without trained weights, outputs stamped
    examples_dir: Path
    examples_repo: str | None  # Hub dataset with the example clips, for a Space without the local folder
    work_root: Path  # per-session folders live here
    session_ttl_s: int  # a session's files are deleted this long after its last use (swept on a timer)
    max_jobs: int  # propagation jobs running at once (the queue holds the rest)
    queue_size: int

    @classmethod
    def from_env(cls) -> Settings:
        gpu = torch.cuda.is_available()
        return cls(
            max_frames=_int("LLB_MAX_FRAMES", 300 if gpu else 90),
            max_side=_int("LLB_MAX_SIDE", 854 if gpu else 640),
            max_upload_mb=_int("LLB_MAX_UPLOAD_MB", 500),
            max_archive_frames=_int("LLB_MAX_ARCHIVE_FRAMES", 2000),
            max_frame_mb=_int("LLB_MAX_FRAME_MB", 64),
            max_objects=_int("LLB_MAX_OBJECTS", 20 if gpu else 5),
            crop_size=_size("LLB_CROP_SIZE", (480, 832) if gpu else (240, 432)),
            allow_untrained=os.environ.get("LLB_ALLOW_UNTRAINED", "").lower() in ("1", "true", "yes"),
            examples_dir=Path(os.environ.get("LLB_EXAMPLES_DIR", REPO.parent / "shared" / "examples")),
            examples_repo=os.environ.get("LLB_EXAMPLES_REPO") or None,
            work_root=Path(os.environ.get("LLB_APP_TMP", Path(tempfile.gettempdir()) / "llb-app")),
            session_ttl_s=_int("LLB_SESSION_TTL_S", 3600),
            max_jobs=_int("LLB_MAX_JOBS", 1),
            queue_size=_int("LLB_QUEUE_SIZE", 16),
        )
