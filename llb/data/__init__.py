"""Training data: mini-sequences of real videos (DAVIS, YouTube-VOS layouts) and synthetic clips from stills.

Every source is a `ClipDataset`: item n is clip number n, drawn from a generator seeded by (seed, n), as
{"images": (Q, 3, H, W) uint8 RGB, "masks": (Q, 1, H, W) float32} with one target object.
"""

from .davis import DAVIS2017_VAL, VideoClips, VideoSequence, check_training_root, scan_video_root
from .sampler import AugmentConfig, ClipConfig, ClipDataset, MixedClips, preview_grid, sample_rng
from .synthetic import MotionConfig, StillImage, SyntheticClips, SyntheticConfig, scan_static_root

__all__ = [
    "DAVIS2017_VAL",
    "AugmentConfig",
    "ClipConfig",
    "ClipDataset",
    "MixedClips",
    "MotionConfig",
    "StillImage",
    "SyntheticClips",
    "SyntheticConfig",
    "VideoClips",
    "VideoSequence",
    "check_training_root",
    "preview_grid",
    "sample_rng",
    "scan_static_root",
    "scan_video_root",
]
