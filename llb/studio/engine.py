"""Running LLB (or the JOINT-style baseline) on a project through `Session.track`: streamed progress, stop on
request, results saved as they stream. On a ZeroGPU Space inside `spaces.GPU`; elsewhere CUDA if any, else CPU."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from llb.inference.session import Session
from llb.video.export import Exporter, shown

from .ahead import ahead
from .models import NAMES, Models, device_name
from .project import Project
from .results import RunResult

try:
    import spaces

    gpu: Callable = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn: Callable) -> Callable:
        return fn


__all__ = ["NAMES", "Models", "Progress", "device_name", "gpu", "propagate"]  # the app imports the models here
# per project and variant, the latest run and its session (which corrections resume)
_SESSIONS: weakref.WeakKeyDictionary[Project, dict[str, tuple[RunResult, Session]]] = weakref.WeakKeyDictionary()


@dataclass
class Progress:
    """One step of a run, for the UI: `preview` is the overlay of `frame` (None on the last step)."""

    done: int
    total: int
    frame: int
    preview: np.ndarray | None
    message: str
    result: RunResult | None = None  # set on the last step


@gpu
def propagate(project: Project, models: Models, variant: str = "llb", start: int | None = None) -> Iterator[Progress]:
    """Track the project's objects both ways from the reference frame (`Session.track`), saving each frame as it
    comes. With `start` (a corrected later frame) the frames before it keep the previous result and that run's
    session resumes at `start` (a new one, where this process holds none, replays the frames before it).
    `project.stop` ends the run early, keeping what was done; the last Progress carries the result."""
    clip, prompts, ref = project.require_clip(), project.prompts(), project.reference
    if ref not in prompts:
        raise ValueError(f"define at least one object on the reference frame ({ref}) first: click it or paint it")
    segmenter = models.get(variant)
    previous = project.result if variant == "llb" else project.compare.get(variant)
    start = ref if start is None else start
    if start != ref and (previous is None or start not in prompts):
        raise ValueError("run once, then correct a later frame before propagating from it")
    made, kept = _SESSIONS.get(project, {}).get(variant, (None, None))  # none on another ZeroGPU worker
    session = kept if start != ref and made is previous else segmenter.start(clip.folder, history=True)
    session.set_prompts(prompts)
    run = session.track(ref, start)
    result = RunResult.create(project.workdir, variant, segmenter.trained, device_name())
    if start != ref:
        result.copy_before(previous, start)
    done, busy, total = 0, 0.0, run.total
    project.stop.clear()
    with Exporter([result]) as store:  # the frames are saved on the exporter's thread
        for res, seconds in ahead(run.stream, project.stop):
            busy, done = busy + seconds, done + 1
            store.write(res.frame, res.labels, f"{res.index:05d}", res.probs, res.object_ids)
            if res.gates:
                result.gates[res.index] = res.gates
            message = f"frame {res.index} ({done}/{total}) · {done / max(busy, 1e-6):.1f} frames/s on {result.device}"
            yield Progress(done, total, res.index, shown(res.frame, res.labels, result.warning), message)
    _SESSIONS.setdefault(project, {})[variant] = (result, session)
    result.stopped, result.fps = project.stop.is_set(), done / max(busy, 1e-6)
    state = "stopped" if result.stopped else "done"
    message = f"{state}: {done}/{total} frames · {result.fps:.1f} frames/s on {result.device}"
    yield Progress(done, total, -1, None, message, result)
