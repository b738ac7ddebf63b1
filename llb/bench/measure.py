"""One benchmark run: the real engine on a looped clip, timed stage by stage, with memory sampled every frame.

Each frame goes through what `llb segment` does with it: decoded, propagated, and encoded (a palette PNG and
a frame of the H.264 overlay video, into a temporary folder). A frame's time runs from the start of its
decoding to the start of the next frame's; `other` is what no stage accounts for (box arithmetic, Python).
The encoding runs on the writer's background thread, as in `llb segment`: its `encode` stage is then only the
hand-over, and the thread's CPU time is counted in whichever stage runs beside it (`sync_write` to keep it in
`encode`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import UNTRAINED
from ..inference.session import Segmenter
from ..inference.timing import FrameTiming, StageTimer
from ..video.export import ResultWriter
from .clip import BenchClip

STAGES = (
    "decode",
    "crop",
    "backbone",
    "label_generator",
    "transduction",
    "learner",
    "fusion",
    "decoder",
    "paste",
    "merge",
    "encode",
)
ENGINE_EXCLUDES = ("decode", "encode")  # the engine's own time leaves out reading and writing the video
MB = 2**20


def _proc_status() -> dict[str, float] | None:
    """VmRSS and VmHWM (peak) of this process in MB, or None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    except OSError:
        return None
    return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count (Linux); elsewhere the peak stays the process's lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory in MB; the peak since `reset_peak_rss`."""
    status = _proc_status()
    if status is not None:
        return status["VmRSS"], status["VmHWM"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if os.uname().sysname == "Linux" else MB)
    return peak, peak


def release_memory() -> None:
    """Give freed memory back to the system between runs (the C heap keeps it otherwise), so that each run's
    RSS starts from what is really held."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


@dataclass
class Run:
    """The record of one run: per-frame timings and memory samples (taken after each frame is encoded)."""

    variant: str
    model: str
    trained: bool
    device: str
    size: tuple[int, int]  # processing size (H, W)
    objects: int
    timings: list[FrameTiming] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)  # peak so far
    gpu_mb: list[float] = field(default_factory=list)
    peak_gpu_mb: list[float] = field(default_factory=list)  # peak so far
    rss_start_mb: float = 0.0  # resident memory before the first frame
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at the start (1, 5, 15 min)
    load_average_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


def load_average() -> tuple[float, float, float]:
    """The system's 1, 5 and 15 minute load averages (zeros where unknown)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def measure(
    seg: Segmenter,
    clip: BenchClip,
    frames: int,
    objects: int,
    variant: str,
    progress: bool = True,
    on_frame: Callable[[], None] | None = None,
    sync_write: bool = False,
) -> Run:
    """Propagate `objects` objects through `frames` frames of the clip, as `llb segment` would; `on_frame` is
    called after each frame (a profiler's step). The results are written on the writer's background thread,
    as `llb segment` writes them, unless `sync_write`."""
    cuda = seg.device.type == "cuda"
    run = Run(
        variant=variant,
        model=seg.model.cfg.key,
        trained=seg.trained,
        device=str(seg.device),
        size=seg.cfg.crop.size,
        objects=objects,
        load_average=load_average(),
    )
    timer = StageTimer(seg.device)
    session = seg.start(clip.frames(frames), timer)
    session.add_mask(0, clip.first_mask(objects))
    release_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats(seg.device)
    reset_peak_rss()
    run.rss_start_mb = rss_mb()[0]
    desc = f"{run.model} {run.size[1]}x{run.size[0]} {objects} obj"
    with tempfile.TemporaryDirectory(prefix="llb-bench-") as out:
        writer = ResultWriter(out, warning=None if seg.trained else UNTRAINED, background=not sync_write)
        with writer:
            for result in tqdm(session.propagate(), total=frames, desc=desc, unit="frame", disable=not progress):
                with timer.stage("encode"):
                    writer.write(result.frame, result.labels, result.name)
                rss, peak = rss_mb()
                run.rss_mb.append(rss)
                run.peak_rss_mb.append(peak)
                if cuda:
                    run.gpu_mb.append(torch.cuda.memory_allocated(seg.device) / MB)
                    run.peak_gpu_mb.append(torch.cuda.max_memory_allocated(seg.device) / MB)
                if on_frame is not None:
                    on_frame()
    run.timings = timer.frames
    run.load_average_end = load_average()
    return run


def _round(x: float) -> float:
    return round(float(x), 2)


def summarise(run: Run, upto: int, warmup: int) -> dict[str, object]:
    """Figures of the first `upto` frames; latency and stage times leave out the first `warmup` frames (the
    first frame fits the target model from zero; on CUDA the first frames also tune kernels)."""
    upto = min(upto, len(run.timings))
    skip = min(warmup, upto - 1)
    steady = run.timings[skip:upto]
    wall = np.array([t.wall for t in steady]) * 1000
    cpu = np.array([t.cpu for t in steady]) * 1000
    stages = {name: float(np.mean([t.stages.get(name, 0.0) for t in steady]) * 1000) for name in STAGES}
    stages["other"] = max(0.0, float(wall.mean()) - sum(stages.values()))
    stages_cpu = {name: float(np.mean([t.stages_cpu.get(name, 0.0) for t in steady]) * 1000) for name in STAGES}
    stages_cpu["other"] = max(0.0, float(cpu.mean()) - sum(stages_cpu.values()))
    engine = float(wall.mean()) - sum(stages[name] for name in ENGINE_EXCLUDES)
    tail = wall[-min(100, len(wall)) :]
    return {
        "frames": upto,
        "fps": _round(1000 / wall.mean()),
        "ms_median": _round(np.median(wall)),
        "ms_p90": _round(np.percentile(wall, 90)),
        "ms_mean": _round(wall.mean()),
        "ms_median_last100": _round(np.median(tail)),
        "cpu_ms_median": _round(np.median(cpu)),
        "cpu_ms_mean": _round(cpu.mean()),
        "engine_fps": _round(1000 / engine) if engine > 0 else None,
        "first_frame_ms": _round(run.timings[0].wall * 1000),
        "peak_rss_mb": _round(run.peak_rss_mb[upto - 1]),
        "rss_mb": _round(run.rss_mb[upto - 1]),
        "rss_start_mb": _round(run.rss_start_mb),
        "peak_gpu_mb": _round(run.peak_gpu_mb[upto - 1]) if run.peak_gpu_mb else 0.0,
        "stages": {name: _round(ms) for name, ms in stages.items()},
        "stages_cpu": {name: _round(ms) for name, ms in stages_cpu.items()},
    }
