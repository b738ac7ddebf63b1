"""Limits and switches of the app, read from the environment once (through llb.settings), with defaults that
keep a CPU Space responsive (a short clip at a modest size); on a GPU the frame limit is higher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import settings as env_settings
from ..checkpoint import UNTRAINED
from ..inference.int8 import check_int8

__all__ = ["UNTRAINED", "Settings"]  # UNTRAINED: the app and its results stamp with it


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
    config: str  # the networks' configuration (lite; tiny in the tests)
    allow_untrained: bool  # development only: run a network without trained weights, outputs stamped
    int8: bool  # the networks' decoder in int8 (CPU, lite only)
    examples_dir: Path
    examples_repo: str | None  # Hub dataset with the example clips, for a Space without the local folder
    work_root: Path  # per-session folders live here
    session_ttl_s: int  # a session's files are deleted this long after its last use (swept on a timer)
    max_jobs: int  # propagation jobs running at once (the queue holds the rest)
    queue_size: int

    @classmethod
    def from_env(cls) -> Settings:
        gpu = torch.cuda.is_available()
        env = env_settings.from_env()
        if env.int8:  # a setting the app cannot honour stops it at start, in the operator's words
            check_int8(torch.device("cuda" if gpu else "cpu"), env.app_config)

        def pick(value: int | None, default: int) -> int:
            return default if value is None else value

        return cls(
            max_frames=pick(env.max_frames, 300 if gpu else 90),
            max_side=pick(env.max_side, 854 if gpu else 640),
            max_upload_mb=env.max_upload_mb,
            max_archive_frames=env.max_archive_frames,
            max_frame_mb=env.max_frame_mb,
            max_objects=pick(env.max_objects, 20 if gpu else 5),
            crop_size=env.crop_size or ((480, 832) if gpu else (240, 432)),
            config=env.app_config,
            allow_untrained=env.allow_untrained,
            int8=env.int8,
            examples_dir=env.examples_dir,
            examples_repo=env.examples_repo,
            work_root=env.app_tmp,
            session_ttl_s=env.session_ttl_s,
            max_jobs=env.max_jobs,
            queue_size=env.queue_size,
        )
