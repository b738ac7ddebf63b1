"""Video and mask I/O for the engine and the app: decoding uploads, writing H.264 mp4, masks, overlays.

Nothing here knows about the network; frames are RGB uint8 numpy arrays and masks uint8 label maps.
"""

from llb.video.io import (
    DEFAULT_FPS,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoError,
    VideoInfo,
    VideoWriter,
    add_audio,
    ffmpeg_exe,
    has_audio,
    iter_frames,
    probe,
    scaled_size,
)
from llb.video.masks import (
    BACKGROUND,
    MAX_OBJECTS,
    VOID,
    MaskError,
    davis_palette,
    labels_from_probs,
    load_mask,
    object_ids,
    overlay,
    save_palette_png,
)

__all__ = [
    "BACKGROUND",
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "MAX_OBJECTS",
    "VIDEO_SUFFIXES",
    "VOID",
    "MaskError",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "add_audio",
    "davis_palette",
    "ffmpeg_exe",
    "has_audio",
    "iter_frames",
    "labels_from_probs",
    "load_mask",
    "object_ids",
    "overlay",
    "probe",
    "save_palette_png",
    "scaled_size",
]
