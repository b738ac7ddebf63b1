"""LLB video object segmentation: "Learning to Learn Better for Video Object Segmentation" (Lan et al., AAAI 2023).

The public API is the inference session that the app, the command line, evaluation and benchmarks all use::

    from llb import Segmenter
    session = Segmenter.from_pretrained().start("video.mp4")  # trained lite-llb (or variant="joint")
    session.add_mask(0, labels)                                # (H, W) object ids on frame 0
    for result in session.propagate():                         # FrameResult: labels, probs, ...
        ...

`examples/track_objects.py` runs it end to end.
"""

from llb.checkpoint import load_model
from llb.config import ModelConfig, get_config
from llb.inference.session import FrameResult, InferenceConfig, Segmenter, Session
from llb.network import LLBNet
from llb.video.export import ResultWriter
from llb.video.io import probe
from llb.video.masks import load_mask, overlay, save_palette_png

__all__ = [
    "FrameResult",
    "InferenceConfig",
    "LLBNet",
    "ModelConfig",
    "ResultWriter",
    "Segmenter",
    "Session",
    "get_config",
    "load_mask",
    "load_model",
    "overlay",
    "probe",
    "save_palette_png",
]
