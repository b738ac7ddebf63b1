"""`llb bench --peers`: another engine timed on the same clip, for the ratio at equal work.

SAM 2.1 hiera-tiny (`sam2`, from PyPI) propagates the clip's first-frame mask of one object, with random
weights (speed does not depend on them) at a square processing size of about our crop's area (320x320 beside
432x240), in bf16 autocast unless `--fp32`. Its predictor loads and resizes the whole clip before it starts,
so only the propagation is timed: wall ms between two frames it hands out. sam2 needs hydra-core and iopath
and pins no torch of its own; the README (CPU speed) gives a throwaway environment that shares this torch.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .clip import BenchClip

PEERS = ("sam2",)
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM2_SIZE = 320


class PeerUnavailable(RuntimeError):
    """The peer's package cannot be imported here."""


def run_peer(name: str, clip: BenchClip, frames: int, warmup: int, bf16: bool) -> dict[str, object]:
    """Time peer `name` on the first `frames` frames of the clip (looped), one object; its median and p90
    wall ms per frame after `warmup` frames. Raises PeerUnavailable where the peer is not installed."""
    if name != "sam2":
        raise ValueError(f"unknown peer {name!r}: choose from {', '.join(PEERS)}")
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as err:
        raise PeerUnavailable(
            f"sam2 is not importable ({err}): install it as the README's 'CPU speed (issue 24)' section says"
        ) from err
    predictor = build_sam2_video_predictor(
        SAM2_CONFIG, None, device="cpu", hydra_overrides_extra=[f"++model.image_size={SAM2_SIZE}"]
    )
    mask = clip.first_mask(1) > 0
    times: list[float] = []
    precision = "bf16" if bf16 else "fp32"
    with tempfile.TemporaryDirectory(prefix="llb-peer-") as folder:
        for i, rgb in enumerate(clip.frames(frames)):  # sam2 reads a folder of frames named by their index
            cv2.imwrite(str(Path(folder) / f"{i:05d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            state = predictor.init_state(folder, offload_video_to_cpu=True)
            predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
            last = time.perf_counter()
            for _ in predictor.propagate_in_video(state):
                now = time.perf_counter()
                times.append(now - last)
                last = now
    wall = np.array(times[min(warmup, len(times) - 1) :]) * 1000
    return {
        "peer": f"SAM 2.1 hiera-tiny {SAM2_SIZE}x{SAM2_SIZE} {precision}, random weights",
        "frames": len(times),
        "ms_median": round(float(np.median(wall)), 2),
        "ms_p90": round(float(np.percentile(wall, 90)), 2),
        "fps": round(1000 / float(wall.mean()), 2),
    }
