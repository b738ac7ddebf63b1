"""Optional wall-clock timing of the engine's stages, frame by frame (`Segmenter.start(video, timer=...)`).

A session without a timer does no timing at all. With one, every stage of every frame is timed: decoding, crop,
backbone, label generator, transduction, few-shot learner, fusion, decoder, paste-back and merging, plus
whatever the consumer times itself between two frames (the benchmark's `encode`). On CUDA each stage boundary
synchronises the device so that queued work is counted in the stage that queued it; that synchronisation is
the only thing timing changes, and only while a timer is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

StageFn = Callable[[str], AbstractContextManager[object]]


def untimed(name: str) -> AbstractContextManager[object]:
    """The stage function of a session without a timer: does nothing."""
    return nullcontext()


@dataclass
class FrameTiming:
    """One frame: wall seconds from the start of its decoding to the start of the next frame's (so the
    consumer's handling of the result counts) and the process's CPU seconds over the same span (all threads
    together); per stage, wall and CPU seconds. CPU time is the work done, which other processes on a shared
    machine do not inflate as they inflate wall time."""

    wall: float = 0.0
    cpu: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    stages_cpu: dict[str, float] = field(default_factory=dict)


class StageTimer:
    """Records a `FrameTiming` per propagated frame in `frames`."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.frames: list[FrameTiming] = []
        self._device = torch.device(device)
        self._open: tuple[float, float] | None = None

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def begin_frame(self) -> None:
        """Close the open frame, if any, and open the next one."""
        self.end_frame()
        self._sync()
        self.frames.append(FrameTiming())
        self._open = (time.perf_counter(), time.process_time())

    def end_frame(self, discard: bool = False) -> None:
        """Close the open frame; `discard` drops it (a frame that turned out not to exist)."""
        if self._open is None:
            return
        self._sync()
        wall, cpu = self._open
        self._open = None
        if discard:
            self.frames.pop()
            return
        self.frames[-1].wall = time.perf_counter() - wall
        self.frames[-1].cpu = time.process_time() - cpu

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to stage `name` of the open frame (of a new frame if none is open)."""
        if not self.frames:
            self.begin_frame()
        self._sync()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._sync()
            frame = self.frames[-1]
            frame.stages[name] = frame.stages.get(name, 0.0) + time.perf_counter() - wall
            frame.stages_cpu[name] = frame.stages_cpu.get(name, 0.0) + time.process_time() - cpu
