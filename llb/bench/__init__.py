"""How fast the engine is and where the time goes, measured on a real clip (`llb bench`, whose face is
llb/commands/bench.py; `llb bench-clicks` and `llb bench-train` time the click backends and training).

For every variant x processing size x object count, one run propagates the clip (looped to the longest length
asked for) through the real engine and reports, at each length asked for: per-frame latency (median, p90),
frames per second, the split by stage, peak RSS and peak GPU memory. A run of N frames is the first N frames of
the longest run (the engine streams and keeps no per-frame state), so `--frames 100 1000 3000` shows growth
from one run. Speed goals live here, never in unit tests.
"""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile, schedule

from ..inference.session import Segmenter
from .clip import BenchClip
from .measure import Run, measure

PROFILE_FRAMES = 20


def measure_profiled(
    seg: Segmenter,
    clip: BenchClip,
    length: int,
    objects: int,
    variant: str,
    warmup: int,
    progress: bool = True,
    sync_write: bool = False,
) -> tuple[Run, str]:
    """A run under torch.profiler, recording `PROFILE_FRAMES` frames after the `warmup` frames; the run and the
    profiler's table of operators by self time."""
    cuda = seg.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    plan = schedule(wait=max(0, warmup - 1), warmup=1, active=PROFILE_FRAMES, repeat=1)
    with profile(activities=activities, schedule=plan) as prof:
        run = measure(seg, clip, length, objects, variant, progress=progress, on_frame=prof.step, sync_write=sync_write)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return run, prof.key_averages().table(sort_by=sort, row_limit=30)
