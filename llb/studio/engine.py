"""Running LLB (or the JOINT-style baseline) on a project: trained checkpoints only (unless the development
switch allows an untrained network), streamed progress, stop on request, results on disk.

On a ZeroGPU Space the propagation runs inside `spaces.GPU`; elsewhere on CUDA when there is one, else CPU.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from llb.checkpoint import CheckpointError, resolve_checkpoint
from llb.config import get_config
from llb.inference.crop import CropConfig
from llb.inference.session import FrameResult, InferenceConfig, Segmenter

from .project import Project
from .results import RunResult, shown
from .settings import Settings

try:
    import spaces

    gpu: Callable = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn: Callable) -> Callable:
        return fn


_END = object()
log = logging.getLogger(__name__)
NAMES = {"llb": "LLB", "joint": "JOINT-style (sum fusion)"}


def device_name() -> str:
    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads)"


class Models:
    """Segmenters by variant, loaded once per process and shared by every session (sessions hold the state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._segmenters: dict[str, Segmenter] = {}
        self._problems: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def problem(self, variant: str) -> str | None:
        """None when `variant` can run; otherwise what is missing and what to do about it."""
        if variant not in self._problems:
            key = get_config("lite", variant).key
            try:
                resolve_checkpoint(key)
                self._problems[variant] = None
            except CheckpointError as err:
                log.warning("%s", err)  # where it looked: for the log, not the page
                self._problems[variant] = (
                    None
                    if self.settings.allow_untrained
                    else (
                        f"No trained {NAMES[variant]} checkpoint yet, so nothing can be tracked. Put "
                        f"`{key}.safetensors` into `checkpoints/` (or a folder named by `LLB_CHECKPOINT_DIR`, "
                        f"or publish it to the Hub repo named by `LLB_HUB_REPO`) and restart the app."
                    )
                )
        return self._problems[variant]

    def get(self, variant: str) -> Segmenter:
        problem = self.problem(variant)
        if problem:
            raise CheckpointError(problem)
        with self._lock:
            if variant not in self._segmenters:
                inference = InferenceConfig(crop=CropConfig(size=self.settings.crop_size), return_gates=True)
                self._segmenters[variant] = Segmenter.from_pretrained(
                    config="lite",
                    variant=variant,
                    allow_untrained=self.settings.allow_untrained,
                    inference=inference,
                )
            return self._segmenters[variant]


def _on_one_thread(
    make: Callable[[], Iterator[FrameResult]], stop: threading.Event
) -> Iterator[tuple[FrameResult, float]]:
    """Iterate a session's stream on its own thread, yielding (result, seconds it took).

    The engine runs up to two frames ahead of the page: while Gradio encodes and sends one preview, the next
    frame is being segmented. `stop` (or closing this iterator) ends the stream after the current frame.
    """
    out: queue.Queue = queue.Queue(maxsize=2)
    halt = threading.Event()

    def put(item: object) -> None:
        while not halt.is_set():
            with contextlib.suppress(queue.Full):
                out.put(item, timeout=0.1)
                return

    def work() -> None:
        try:
            stream = make()
            while not (stop.is_set() or halt.is_set()):
                tick = time.perf_counter()
                res = next(stream, None)
                if res is None:
                    break
                put((res, time.perf_counter() - tick))
            stream.close()
            put(_END)
        except Exception as err:
            put(err)

    threading.Thread(target=work, name="llb-propagate", daemon=True).start()
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        halt.set()


@dataclass
class Progress:
    """One step of a run, for the UI: `preview` is the overlay of `frame` (None while replaying)."""

    done: int
    total: int
    frame: int
    preview: np.ndarray | None
    message: str
    result: RunResult | None = None  # set on the last step


def _new_result(project: Project, variant: str, trained: bool) -> RunResult:
    folder = project.workdir / f"run-{variant}-{time.time_ns()}"
    folder.mkdir(parents=True)
    return RunResult(variant, folder, trained, device=device_name())


@gpu
def propagate(project: Project, models: Models, variant: str = "llb", start: int | None = None) -> Iterator[Progress]:
    """Track the project's objects from the reference frame, forward to the end and back to frame 0.

    With `start` (a corrected frame after the reference), the frames before it keep the previous result:
    the engine replays them (to rebuild the same memory) without writing, and the corrected frame joins the
    memory. `project.stop` ends the run early; what was done is kept. The last Progress carries the result.
    """
    clip = project.require_clip()
    prompts = project.prompts()
    ref = project.reference
    if ref not in prompts:
        raise ValueError(f"define at least one object on the reference frame ({ref}) first: click it or paint it")
    segmenter = models.get(variant)
    previous = project.result if variant == "llb" else project.compare.get(variant)
    write_from = ref if start is None else start
    if write_from != ref and (previous is None or write_from not in prompts):
        raise ValueError("run once, then correct a later frame before propagating from it")
    result = _new_result(project, variant, segmenter.trained)
    if write_from != ref:
        for index in previous.frames():
            if index < write_from:
                result.copy_frame(previous, index)
        result.gates = {k: v for k, v in previous.gates.items() if k < write_from}
    project.stop.clear()
    backward = ref if write_from == ref else 0
    total = clip.num_frames - write_from + backward
    done, busy = 0, 0.0

    def step(out_index: int, res: FrameResult) -> Progress:
        nonlocal done
        result.save(out_index, res.labels, res.probs, res.object_ids)
        if res.gates:
            result.gates[out_index] = res.gates
        done += 1
        fps = done / max(busy, 1e-6)
        message = f"frame {out_index} ({done}/{total}) · {fps:.1f} frames/s on {result.device}"
        return Progress(done, total, out_index, shown(res.frame, res.labels, result.warning), message)

    session = segmenter.start(clip.folder)
    for index, labels in prompts.items():
        session.add_mask(index, labels)
    passes = [(lambda: session.propagate(start=ref), False)]
    if backward:  # frames before the reference: the same objects tracked on the reversed clip
        back = segmenter.start(clip.frame(i) for i in range(ref, -1, -1))
        back.add_mask(0, prompts[ref])
        passes.append((lambda: back.propagate(start=0), True))
    for make, reverse in passes:
        for res, seconds in _on_one_thread(make, project.stop):
            index = ref - res.index if reverse else res.index
            if reverse and index == ref:
                continue  # written by the forward pass
            if not reverse and index < write_from:
                yield Progress(done, total, index, None, f"replaying frame {index} to rebuild the memory")
                continue
            busy += seconds
            yield step(index, res)
    result.stopped = project.stop.is_set()
    result.fps = done / max(busy, 1e-6)
    state = "stopped" if result.stopped else "done"
    message = f"{state}: {done}/{total} frames · {result.fps:.1f} frames/s on {result.device}"
    yield Progress(done, total, -1, None, message, result)
