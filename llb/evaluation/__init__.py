"""Benchmarks: the DAVIS measures (`metrics`, pure numpy/OpenCV), DAVIS scoring and runs (`davis`), and
YouTube-VOS submissions (`ytvos`). The metric functions are re-exported here."""

from llb.evaluation.metrics import (
    BOUND_TH,
    Statistics,
    boundary_radius,
    f_measure,
    frame_scores,
    jaccard,
    seg2bmap,
    statistics,
)

__all__ = [
    "BOUND_TH",
    "Statistics",
    "boundary_radius",
    "f_measure",
    "frame_scores",
    "jaccard",
    "seg2bmap",
    "statistics",
]
