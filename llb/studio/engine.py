"""Running LLB (or the JOINT-style baseline) on a project through a `Session`: streamed progress, stop on
request, results saved as they stream; a correction resumes the session of the run it corrects.

On a ZeroGPU Space the propagation runs inside `spaces.GPU`; elsewhere on CUDA when there is one, else CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

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


def _session(project: Project, variant: str, previous: RunResult | None) -> Session | None:
    """The session that made `previous`, holding the memory at every frame it passed; None when this process
    has none (on ZeroGPU each run may be another worker)."""
    kept = _SESSIONS.get(project, {}).get(variant)
    return kept[1] if kept is not None and kept[0] is previous else None


@gpu
def propagate(project: Project, models: Models, variant: str = "llb", start: int | None = None) -> Iterator[Progress]:
    """Track the project's objects from the reference frame, forward to the end and back to frame 0.

    With `start` (a corrected frame after the reference), the frames before it keep the previous result and the
    session of that run resumes at `start` with the memory it had built there (where this process no longer
    holds it, a new session replays the frames before `start`, without writing). `project.stop` ends the run
    early; what was done is kept. The last Progress carries the result.
    """
    clip, prompts, ref = project.require_clip(), project.prompts(), project.reference
    if ref not in prompts:
        raise ValueError(f"define at least one object on the reference frame ({ref}) first: click it or paint it")
    segmenter = models.get(variant)
    previous = project.result if variant == "llb" else project.compare.get(variant)
    write_from = ref if start is None else start
    if write_from != ref and (previous is None or write_from not in prompts):
        raise ValueError("run once, then correct a later frame before propagating from it")
    kept = _session(project, variant, previous) if write_from != ref else None
    session = kept or segmenter.start(clip.folder, history=True)
    session.set_prompts(prompts)
    result = RunResult.create(project.workdir, variant, segmenter.trained, device_name())
    if write_from != ref:
        result.copy_before(previous, write_from)
    # forwards (from the reference where a new session must replay up to `write_from`), then backwards
    passes = [(write_from if kept else ref, False)] + ([(ref, True)] if write_from == ref and ref > 0 else [])
    total = clip.num_frames - write_from + (ref if write_from == ref else 0)
    done, busy = 0, 0.0
    project.stop.clear()
    with Exporter([result]) as store:  # the frames are saved on the exporter's thread
        for begin, reverse in passes:
            stream = partial(session.propagate, start=begin, reverse=reverse)
            for res, seconds in ahead(stream, project.stop):
                if (res.index == ref) if reverse else (res.index < write_from):
                    continue  # the reference (written forwards), or a frame replayed to rebuild the memory
                busy, done = busy + seconds, done + 1
                store.write(res.frame, res.labels, f"{res.index:05d}", res.probs, res.object_ids)
                if res.gates:
                    result.gates[res.index] = res.gates
                speed = f"{done / max(busy, 1e-6):.1f} frames/s on {result.device}"
                preview = shown(res.frame, res.labels, result.warning)
                yield Progress(done, total, res.index, preview, f"frame {res.index} ({done}/{total}) · {speed}")
    _SESSIONS.setdefault(project, {})[variant] = (result, session)
    result.stopped, result.fps = project.stop.is_set(), done / max(busy, 1e-6)
    state = "stopped" if result.stopped else "done"
    message = f"{state}: {done}/{total} frames · {result.fps:.1f} frames/s on {result.device}"
    yield Progress(done, total, -1, None, message, result)
