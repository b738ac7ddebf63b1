"""Every `LLB_*` environment variable, read in one place into one typed, frozen object.

`from_env()` reads the environment when called (cheap), so a variable set before a call is honoured. Where the
repository and the shared data are also lives here: a checkout (editable install, or `PYTHONPATH` on a copy)
finds them beside the package; an installed package (site-packages holds no checkpoints/ and no ../shared)
looks in the current working directory instead. The README's Environment table lists the same variables.

Variables that belong to other tools stay where they are read: torchrun's RANK / WORLD_SIZE / LOCAL_RANK
(llb/training/distributed.py, its launch protocol) and Gradio's GRADIO_SERVER_NAME (app.py).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_CONFIG

PACKAGE = Path(__file__).resolve().parent
TRUE = ("1", "true", "yes")
DEFAULT_HUB_REPO = "llb-vos/llb-checkpoints"


def repo_root() -> Path:
    """The folder holding checkpoints/ and examples/: the package's parent in a checkout, else the working
    directory (a non-editable install puts the package in site-packages, far from both)."""
    if PACKAGE.parent.name in ("site-packages", "dist-packages"):
        return Path.cwd()
    return PACKAGE.parent


def _text(name: str) -> str | None:
    """The variable's value, None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def _path(name: str) -> Path | None:
    value = _text(name)
    return Path(value) if value else None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower().strip() in TRUE


def _int(name: str) -> int | None:
    value = _text(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value}: expected a whole number") from None


def _size(name: str) -> tuple[int, int] | None:
    """`WxH` -> (H, W); multiples of 16 (the network's stride)."""
    value = (_text(name) or "").lower()
    if not value:
        return None
    try:
        w, h = (int(v) for v in value.split("x"))
    except ValueError:
        raise ValueError(f"{name}={value}: expected WIDTHxHEIGHT, e.g. 432x240") from None
    if w % 16 or h % 16:
        raise ValueError(f"{name}={value}: width and height must be multiples of 16")
    return h, w


@dataclass(frozen=True)
class Settings:
    """The `LLB_*` variables, typed. None means unset: the reader applies its default (the app's limits depend
    on the device, so llb/studio/settings.py picks those)."""

    shared: Path  # LLB_SHARED: the project's shared data and examples (default ../shared beside the repo)
    data: Path  # LLB_DATA: the data sets (default $LLB_SHARED/data)
    checkpoint_dir: Path | None  # LLB_CHECKPOINT_DIR: looked in before the repo's checkpoints/
    checkpoints: Path  # the repo's checkpoints/ (the working directory's for an installed package)
    hub_repo: str  # LLB_HUB_REPO: Hub model repo with the trained checkpoints
    hub_offline: bool  # HF_HUB_OFFLINE (huggingface_hub's own switch): never reach the Hub
    sam_checkpoint: str | None  # LLB_SAM_CHECKPOINT: SAM weights for the click tool
    sam_model: str  # LLB_SAM_MODEL: SAM variant (vit_t = MobileSAM)
    click_backend: str | None  # LLB_CLICK_BACKEND: model, local-zone or grabcut
    u2netp: Path | None  # LLB_U2NETP: u2netp.onnx, else rembg's copy
    # The app (llb/studio/settings.py):
    max_frames: int | None  # LLB_MAX_FRAMES (90 on CPU, 300 on CUDA)
    max_side: int | None  # LLB_MAX_SIDE (640 / 854 px)
    max_upload_mb: int  # LLB_MAX_UPLOAD_MB
    max_archive_frames: int  # LLB_MAX_ARCHIVE_FRAMES
    max_frame_mb: int  # LLB_MAX_FRAME_MB
    max_objects: int | None  # LLB_MAX_OBJECTS (5 on CPU, 20 on CUDA)
    crop_size: tuple[int, int] | None  # LLB_CROP_SIZE as (H, W) (432x240 on CPU, 832x480 on CUDA)
    app_config: str  # LLB_APP_CONFIG: the app's network configuration (lite; tiny for tests)
    allow_untrained: bool  # LLB_ALLOW_UNTRAINED: development only
    int8: bool  # LLB_INT8: the app's lite networks with the int8 decoder (CPU only; llb/inference/int8.py)
    examples_dir: Path  # LLB_EXAMPLES_DIR (default $LLB_SHARED/examples)
    examples_repo: str | None  # LLB_EXAMPLES_REPO: Hub dataset with the example clips
    app_tmp: Path  # LLB_APP_TMP: the app's session folders
    session_ttl_s: int  # LLB_SESSION_TTL_S
    max_jobs: int  # LLB_MAX_JOBS
    queue_size: int  # LLB_QUEUE_SIZE


def from_env() -> Settings:
    """Read the environment now; a malformed number or size raises ValueError naming the variable."""
    repo = repo_root()
    shared = _path("LLB_SHARED") or repo.parent / "shared"

    def number(name: str, default: int) -> int:
        value = _int(name)
        return default if value is None else value

    return Settings(
        shared=shared,
        data=_path("LLB_DATA") or shared / "data",
        checkpoint_dir=_path("LLB_CHECKPOINT_DIR"),
        checkpoints=repo / "checkpoints",
        hub_repo=_text("LLB_HUB_REPO") or DEFAULT_HUB_REPO,
        hub_offline=_flag("HF_HUB_OFFLINE"),
        sam_checkpoint=_text("LLB_SAM_CHECKPOINT"),
        sam_model=_text("LLB_SAM_MODEL") or "vit_t",
        click_backend=os.environ.get("LLB_CLICK_BACKEND"),
        u2netp=_path("LLB_U2NETP"),
        max_frames=_int("LLB_MAX_FRAMES"),
        max_side=_int("LLB_MAX_SIDE"),
        max_upload_mb=number("LLB_MAX_UPLOAD_MB", 500),
        max_archive_frames=number("LLB_MAX_ARCHIVE_FRAMES", 2000),
        max_frame_mb=number("LLB_MAX_FRAME_MB", 64),
        max_objects=_int("LLB_MAX_OBJECTS"),
        crop_size=_size("LLB_CROP_SIZE"),
        app_config=_text("LLB_APP_CONFIG") or DEFAULT_CONFIG,
        allow_untrained=_flag("LLB_ALLOW_UNTRAINED"),
        int8=_flag("LLB_INT8"),
        examples_dir=_path("LLB_EXAMPLES_DIR") or shared / "examples",
        examples_repo=_text("LLB_EXAMPLES_REPO"),
        app_tmp=_path("LLB_APP_TMP") or Path(tempfile.gettempdir()) / "llb-app",
        session_ttl_s=number("LLB_SESSION_TTL_S", 3600),
        max_jobs=number("LLB_MAX_JOBS", 1),
        queue_size=number("LLB_QUEUE_SIZE", 16),
    )
