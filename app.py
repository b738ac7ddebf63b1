"""LLB video object segmentation: the Gradio app (also a Hugging Face Space).

Only the UI lives here: components, their wiring and the mapping of UI values to `llb.studio` (sessions,
clips, objects, runs, results) and `llb.interactive` (click segmentation). Every handler is also a named API
endpoint (see the README's App section); bad input ends in a message, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from llb.bench.measure import release_memory
from llb.checkpoint import CheckpointError
from llb.interactive import ClickSegmenter, default_click_segmenter
from llb.studio.clip import UPLOAD_FORMATS, UPLOAD_TYPES, prepare_clip
from llb.studio.engine import NAMES, Models, device_name, propagate
from llb.studio.examples import example_path, load_examples
from llb.studio.project import Project, Sessions
from llb.studio.results import MOST_VARIED, RunResult, gate_channels, gate_choices, gate_heatmaps, render
from llb.studio.settings import UNTRAINED, Settings
from llb.studio.views import (
    ADD_COLOUR,
    ERASE_COLOUR,
    colour_scale,
    disagreement_table,
    editor_value,
    gate_table,
    legend,
    working_view,
)
from llb.studio.views import strokes as editor_strokes
from llb.video.export import CUTOUTS
from llb.video.io import VideoError
from llb.video.masks import load_mask

log = logging.getLogger("llb.app")
SETTINGS = Settings.from_env()
MODELS = Models(SETTINGS)
SESSIONS = Sessions(
    SETTINGS.work_root,
    SETTINGS.session_ttl_s,
    sweep_every_s=min(300.0, max(1.0, SETTINGS.session_ttl_s / 4)),
    max_objects=SETTINGS.max_objects,
)
SESSIONS.close_on_exit()
EXAMPLES = {e.title: e for e in load_examples(SETTINGS)}
PROGRESS = gr.Progress()  # the default that tells Gradio to pass a progress tracker
DISPLAY_SIDE = 480  # a smaller clip's working view is enlarged (nearest neighbour) to at least this side
PREVIEW_EVERY_S = 0.3  # at most ~3 preview images a second reach the browser
_click_segmenter: ClickSegmenter | None = None
_click_segmenter_lock = threading.Lock()
# A server path in a message (two or more parts): the page gets its last part only, the log the whole message.
SERVER_PATH = re.compile(r"(?<![\w.:/~])(?:/[^/\s'\"]+)+/([^/\s'\"]+)")

# Keeps the two comparison videos playing, pausing and seeking together.
HEAD = """<script>
(() => {
  const ids = ['#cmp-llb video', '#cmp-joint video'];
  const peers = (v) => [...document.querySelectorAll(ids.join(','))].filter((o) => o !== v);
  for (const type of ['play', 'pause', 'seeked', 'ratechange']) {
    document.addEventListener(type, (e) => {
      const v = e.target;
      if (!(v instanceof HTMLVideoElement) || v.dataset.syncing || !v.closest('#cmp-llb, #cmp-joint')) return;
      for (const o of peers(v)) {
        o.dataset.syncing = '1';
        if (Math.abs(o.currentTime - v.currentTime) > 0.05) o.currentTime = v.currentTime;
        o.playbackRate = v.playbackRate;
        if (type === 'play') o.play().catch(() => {});
        if (type === 'pause') o.pause();
        setTimeout(() => delete o.dataset.syncing, 100);
      }
    }, true);
  }
})();
</script>"""


def shared_click_segmenter() -> ClickSegmenter:
    """The click segmenter, loaded on first use; its weights are shared by all sessions."""
    global _click_segmenter
    with _click_segmenter_lock:
        if _click_segmenter is None:
            _click_segmenter = default_click_segmenter()
        return _click_segmenter


def clicker(project: Project) -> ClickSegmenter:
    """The session's own click segmenter (shared weights, its own frame state), so that sessions clicking at
    the same moment get exactly what each would get alone; call with the session's lock held."""
    if project.click_segmenter is None:
        project.click_segmenter = shared_click_segmenter().fork()
    return project.click_segmenter


def project_of(request: gr.Request | None) -> Project:
    """This browser session's project (API clients get one per client session too)."""
    return SESSIONS.get(getattr(request, "session_hash", None) or "default")


def plain(message: str) -> str:
    """`message` with server paths cut down to their file names (the log keeps them whole)."""
    return SERVER_PATH.sub(r"\1", message)


def whole(value: Any, what: str) -> int:
    """`value` (a number, or text holding one) as an int; ValueError in the person's words otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a number, not {str(value)[:40]!r}")
    return int(number)


def guard(fn: Callable) -> Callable:
    """Turn the errors a person can cause into a message in the UI (gr.Error), without server paths, and log
    anything else."""
    expected = (VideoError, CheckpointError, ValueError, IndexError)

    def fail(err: Exception) -> gr.Error:
        if isinstance(err, (gr.Error, *expected)):  # the person's mistake: one log line, no traceback
            log.info("%s: %s", fn.__name__, err)
            message = err.message if isinstance(err, gr.Error) else plain(str(err))
            duration = err.duration if isinstance(err, gr.Error) else 10
            return gr.Error(message, duration=duration, print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong on the server ({type(err).__name__}). The app keeps running; try again.")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise fail(err) from err

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise fail(err) from err

    return call


def model_status() -> str:
    """The banner: which network runs where, or what is missing."""
    problem = MODELS.problem("llb")
    if problem:
        return f"### ⚠️ {problem}"
    if SETTINGS.allow_untrained:
        return f"### ⚠️ Development mode (LLB_ALLOW_UNTRAINED=1): outputs are stamped “{UNTRAINED}”."
    return ""


def display_scale(project: Project) -> int:
    """How many times the working view is enlarged on the page: a tiny video (64x48) is shown at least
    DISPLAY_SIDE px wide or high so that it can be clicked; clicks are divided back (`on_select`)."""
    clip = project.clip
    return 1 if clip is None else max(1, DISPLAY_SIDE // max(clip.width, clip.height))


def refresh(project: Project, message: str = "") -> tuple:
    """Values of the working-frame outputs: view, editor, object dropdown, name box, legend, status."""
    objects = gr.update(choices=project.choices(), value=project.current)
    name = project.objects.get(project.current, "") if project.current else ""
    frame = f"frame {project.active}" + (" (reference)" if project.active == project.reference else " (correction)")
    status = message or (f"{frame}: {len(project.objects)} object(s)" if project.clip else "")
    view, scale = working_view(project), display_scale(project)
    if view is not None and scale > 1:
        view = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return view, editor_value(project), objects, name, legend(project), status


@contextlib.contextmanager
def job(project: Project, kind: str) -> Iterator[None]:
    """The session's one load, run or comparison at a time (see Project.busy); the memory it used is given
    back to the system when it ends, so a big job does not raise the server's footprint for good."""
    try:
        with project.busy(kind):
            yield
    finally:
        release_memory()


def frame_slider(first: int, last: int, value: int) -> dict:
    """A slider over frames first..last. Gradio refuses a slider whose minimum is its maximum, so one frame
    gets a fixed slider over first..first+1."""
    return gr.update(minimum=first, maximum=max(last, first + 1), value=value, interactive=last > first)


# What a new clip resets (after the loaded outputs): the previous clip's preview, overlay, cut-out, masks zip,
# transparent cut-out zip, comparison (status, two videos, two plots), gate maps, gate channels over time, and the
# click mode back to "object".
CLEARED = (None, None, None, None, None, "", None, None, None, None, None, None, "object")


def _load(project: Project, path: str) -> tuple:
    with job(project, "load"):
        clip = prepare_clip(path, project.workdir, SETTINGS)
        with project.lock:
            project.set_clip(clip)
    if clip.notice:
        gr.Warning(clip.notice)
    last = clip.num_frames - 1
    info = f"**{clip.source}**: {clip.num_frames} frames, {clip.width}x{clip.height}, {clip.fps:g} fps. {clip.notice}"
    return (
        info,
        str(clip.preview),
        frame_slider(0, last, 0),
        frame_slider(0, last, 0),
        *refresh(project, f"loaded {clip.source}: {clip.num_frames} frames"),
        *CLEARED,
    )


@guard
def load_video(file: str | None, request: gr.Request) -> tuple:
    """1. An uploaded video, gif or zip of frames."""
    if not file:
        raise gr.Error("no file arrived: choose a video to upload")
    return _load(project_of(request), file)


@guard
def load_example(title: str | None, request: gr.Request) -> tuple:
    """1. One of the example clips."""
    if title not in EXAMPLES:
        raise gr.Error(f"unknown example {title!r}: choose one of {', '.join(EXAMPLES)}")
    return _load(project_of(request), str(example_path(EXAMPLES[title], SETTINGS)))


@guard
def set_reference(index: float, request: gr.Request) -> tuple:
    """2. The reference frame: objects are defined here and tracked from here (both ways)."""
    project = project_of(request)
    clip = project.require_clip()
    index = whole(index, "the reference frame")
    if not 0 <= index < clip.num_frames:
        raise gr.Error(f"frame {index} is outside the clip (0..{clip.num_frames - 1})")
    with project.lock:
        project.reference = project.active = index
    return refresh(project)


@guard
def show_frame(index: float, request: gr.Request) -> tuple:
    """7. View a later frame to correct it (its result, with any edits on top)."""
    project = project_of(request)
    clip = project.require_clip()
    index = whole(index, "the frame to correct")
    if not project.reference <= index < clip.num_frames:
        raise gr.Error(f"corrections go on frames {project.reference}..{clip.num_frames - 1}")
    with project.lock:
        project.active = index
    return refresh(project)


@guard
def click(x: float, y: float, mode: str, request: gr.Request) -> tuple:
    """3. A click at (x, y) pixels of the working frame; `mode` 'object' (positive) or 'background'."""
    project = project_of(request)
    x, y = whole(x, "a click's x"), whole(y, "a click's y")
    with project.lock:
        project.click(project.active, x, y, mode != "background", clicker(project))
    return refresh(project)


def on_select(mode: str, evt: gr.SelectData, request: gr.Request) -> tuple:
    """A click on the image in the browser (the API uses `click`)."""
    scale = display_scale(project_of(request))
    x, y = evt.index
    return click(int(x) // scale, int(y) // scale, mode, request)


@guard
def undo_click(request: gr.Request) -> tuple:
    project = project_of(request)
    with project.lock:
        project.undo_click(project.active, clicker(project))
    return refresh(project)


def _apply_strokes(project: Project, editor: dict | None) -> bool:
    clip = project.require_clip()
    painted = editor_strokes(editor, (clip.height, clip.width))
    if painted is not None:
        with project.lock:
            project.paint(project.active, *painted)
    return painted is not None


@guard
def paint(editor: dict | None, request: gr.Request) -> tuple:
    """3. Brush strokes: green adds to the current object, red erases from it."""
    project = project_of(request)
    if not _apply_strokes(project, editor):
        gr.Warning("nothing painted: draw on the frame with the green (add) or red (erase) brush first")
    return refresh(project)


@guard
def upload_mask(file: str | None, request: gr.Request) -> tuple:
    """3. A mask PNG (palette, grey or colour) for the working frame; each id or colour is an object."""
    project = project_of(request)
    clip = project.require_clip()
    if not file or not Path(file).is_file():
        raise gr.Error("no mask arrived: choose a PNG")
    labels = load_mask(file, size=(clip.width, clip.height))
    with project.lock:
        ids = project.set_labels(project.active, labels)
    return refresh(project, f"mask loaded: {len(ids)} object(s)")


@guard
def add_object(name: str, request: gr.Request) -> tuple:
    project = project_of(request)
    project.require_clip()
    name = str(name or "")
    with project.lock:
        new = project.add_object(None if name in project.objects.values() else name)
    return refresh(project, f"object {new} added: click it")


@guard
def select_object(object_id: float | None, request: gr.Request) -> tuple:
    project = project_of(request)
    if object_id is not None:
        object_id = whole(object_id, "the object")
        with project.lock:
            project.select(object_id)
    return refresh(project)


@guard
def rename_object(name: str, request: gr.Request) -> tuple:
    project = project_of(request)
    with project.lock:
        project.rename(str(name or ""))
    return refresh(project)


@guard
def delete_object(request: gr.Request) -> tuple:
    project = project_of(request)
    with project.lock:
        project.delete()
    return refresh(project)


def _require_model(variant: str) -> None:
    problem = MODELS.problem(variant)
    if problem:
        raise gr.Error(problem, duration=None)


def scaled(image: np.ndarray | None) -> np.ndarray | None:
    """A gate image with its colour scale (0..1) underneath."""
    return None if image is None else np.vstack([image, colour_scale(image.shape[1])])


def heatmaps(result: RunResult, index: int, names: dict[int, str], shown: str = MOST_VARIED) -> np.ndarray | None:
    """The gate heat maps of frame `index` (`shown`: which channel, see `gate_choices`) with their colour scale."""
    return scaled(gate_heatmaps(result, index, names, shown))


def gate_views(result: RunResult, names: dict[int, str]) -> tuple:
    """Line plot, frame slider, heat maps of the first frame, channels over time, and the channel choice reset."""
    first = min(result.gates, default=0)
    return (
        gate_table(result),
        frame_slider(first, max(result.gates, default=0), first),
        heatmaps(result, first, names),
        scaled(gate_channels(result, names)),
        gr.update(choices=gate_choices(result), value=MOST_VARIED),
    )


def _results(project: Project, result: RunResult, cutout: str) -> tuple:
    """Overlay video, cut-out video, masks zip and the gate views (`gate_views`) of a finished (or stopped) run."""
    paths = render(result, project.require_clip(), project.workdir / "outputs", cutout)
    project.keep_outputs("run", list(paths.values()))
    return (
        str(paths["overlay"]),
        str(paths["cutout"]) if paths["cutout"] else None,
        str(paths["zip"]),
        str(paths["alpha"]) if paths["alpha"] else None,
        *gate_views(result, project.objects),
    )


def _stream(project: Project, variant: str, start: int | None, progress: gr.Progress) -> Iterator[tuple]:
    """Run the engine, yielding (preview, status) at most every PREVIEW_EVERY_S, then the RunResult."""
    last = 0.0
    for step in propagate(project, MODELS, variant, start):
        if step.result is not None:
            yield step.result
            return
        progress((step.done, step.total), desc=step.message)
        if step.preview is not None and time.monotonic() - last >= PREVIEW_EVERY_S:
            last = time.monotonic()
            yield step.preview, step.message


def _run(project: Project, start: int | None, cutout: str, editor: dict | None, progress: gr.Progress) -> Iterator:
    clip = project.require_clip()
    if cutout not in CUTOUTS:
        raise gr.Error(f"the cut-out video is one of: {', '.join(CUTOUTS)}")
    _require_model("llb")
    _apply_strokes(project, editor)
    keep = (gr.update(),) * 10
    with job(project, "run"):
        for item in _stream(project, "llb", start, progress):
            if isinstance(item, RunResult):
                project.result = item
                status = f"{'stopped' if item.stopped else 'done'}: {len(item.frames())} frames"
                status += f" · {item.fps:.1f} frames/s on {item.device}"
                last = clip.num_frames - 1
                yield gr.update(), status, *_results(project, item, cutout), frame_slider(0, last, project.active)
                return
            yield *item, *keep


@guard
def run(cutout: str, editor: dict | None, request: gr.Request, progress: gr.Progress = PROGRESS) -> Iterator:
    """4-5. Track the objects through the clip; streams the preview, then the result files."""
    yield from _run(project_of(request), None, cutout, editor, progress)


@guard
def repropagate(
    index: float, cutout: str, editor: dict | None, request: gr.Request, progress: gr.Progress = PROGRESS
) -> Iterator:
    """7. Re-track from a corrected frame: it joins the memory; earlier frames keep their masks."""
    project = project_of(request)
    if project.result is None:
        raise gr.Error("run once first; then correct a later frame and re-propagate from it")
    index = whole(index, "the frame to correct")
    with project.lock:
        project.active = index
    yield from _run(project, index, cutout, editor, progress)


@guard
def stop(request: gr.Request) -> str:
    """Stop the running propagation; the frames done so far are kept and rendered."""
    project_of(request).stop.set()
    return "stopping… the frames done so far are kept"


@guard
def compare(request: gr.Request, progress: gr.Progress = PROGRESS) -> Iterator:
    """6. The same clip, objects and reference through LLB and the JOINT-style baseline, side by side."""
    project = project_of(request)
    clip = project.require_clip()
    for variant in ("llb", "joint"):
        _require_model(variant)
    videos: dict[str, str] = {}
    with job(project, "compare"):
        for variant in ("llb", "joint"):
            for item in _stream(project, variant, None, progress):
                if isinstance(item, RunResult):
                    project.compare[variant] = item
                    overlay = render(item, clip, project.workdir / "outputs")["overlay"]
                    project.keep_outputs(f"compare-{variant}", [overlay])
                    videos[variant] = str(overlay)
                else:
                    yield f"{NAMES[variant]}: {item[1]}", *(gr.update(),) * 8
    llb, joint = project.compare["llb"], project.compare["joint"]
    yield (
        f"compared on {len(llb.frames())} frames · LLB {llb.fps:.1f} frames/s, JOINT-style {joint.fps:.1f} frames/s",
        videos["llb"],
        videos["joint"],
        disagreement_table(llb, joint),
        *gate_views(llb, project.objects),
    )


@guard
def gate_frame(index: float, shown: str | None, request: gr.Request) -> Any:
    """6. Heat maps of the AFM gates on one frame (the comparison's LLB run, else the last run); `shown`: the
    channel that varies most over pixels (the default), the mean over channels, or "channel N"."""
    project = project_of(request)
    result = project.compare.get("llb") or project.result
    if result is None or not result.gates:
        raise gr.Error("run (or compare) first: the gate maps come from an LLB run")
    return heatmaps(result, whole(index, "the frame"), project.objects, shown or MOST_VARIED)


def buttons(request: gr.Request) -> tuple:
    """Run, Compare and Re-propagate, each enabled only when it can start: a trained network, a clip, an object
    on the reference frame, no job going in this session, and for Re-propagate a finished run."""
    project = project_of(request)
    with project.lock:
        idle = project.job is None and project.clip is not None and MODELS.problem("llb") is None
        can_run = idle and project.reference in project.prompts()
        done = can_run and project.result is not None
    compare_ready = can_run and MODELS.problem("joint") is None
    return gr.update(interactive=can_run), gr.update(interactive=compare_ready), gr.update(interactive=done)


def busy_buttons() -> tuple:
    """Run, Compare and Re-propagate disabled while a job starts and runs (a double click runs it once)."""
    return (gr.update(interactive=False),) * 3


def close_session(request: gr.Request) -> None:
    SESSIONS.close(request.session_hash)


def build() -> gr.Blocks:
    """The Blocks app (not launched)."""
    with gr.Blocks(title="LLB video object segmentation", delete_cache=(900, 3600)) as demo:
        gr.Markdown(
            "# LLB: video object segmentation\n"
            "Click or paint objects on one frame; LLB (*Learning to Learn Better*, AAAI 2023) tracks them "
            f"through the video. Runs on **{device_name()}**; clicks: **{shared_click_segmenter().name}**."
        )
        gr.Markdown(model_status(), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(
                    label=f"1. Upload {UPLOAD_FORMATS}",
                    file_types=list(UPLOAD_TYPES),
                    elem_id="upload",
                )
                example = gr.Dropdown(
                    choices=list(EXAMPLES), value=None, label="… or pick an example clip", elem_id="example"
                )
                gr.Markdown(
                    "Examples: " + "; ".join(e.credit_line() for e in EXAMPLES.values())
                    if EXAMPLES
                    else "(no example clips on this server: set LLB_EXAMPLES_DIR)"
                )
                clip_info = gr.Markdown(elem_id="clip-info")
                input_video = gr.Video(label="Clip as processed", interactive=False, elem_id="input-video")
                legend_html = gr.HTML(legend_placeholder(), elem_id="legend")
                with gr.Row():
                    objects = gr.Dropdown(label="Current object", choices=[], elem_id="object")
                    name = gr.Textbox(label="Name", elem_id="object-name")
                with gr.Row():
                    add_btn = gr.Button("Add object", elem_id="add-object")
                    rename_btn = gr.Button("Rename", elem_id="rename-object")
                    delete_btn = gr.Button("Delete", elem_id="delete-object")
                mask_file = gr.File(label="… or upload a mask PNG", file_types=[".png"], elem_id="mask-upload")
            with gr.Column(scale=3):
                ref = gr.Slider(0, 1, value=0, step=1, label="2. Reference frame", interactive=False, elem_id="ref")
                view = gr.Image(
                    label="3. Click the object (green) or the background (red)",
                    interactive=False,
                    elem_id="view",
                    buttons=[],
                )
                with gr.Row():
                    mode = gr.Radio(["object", "background"], value="object", label="A click marks", elem_id="mode")
                    undo_btn = gr.Button("Undo click", elem_id="undo")
                click_x = gr.Number(visible=False)
                click_y = gr.Number(visible=False)
                click_btn = gr.Button(visible=False)
                with gr.Accordion("Brush and eraser: green adds to the current object, red erases", open=True):
                    editor = gr.ImageEditor(
                        type="numpy",
                        sources=(),
                        brush=gr.Brush(colors=[ADD_COLOUR, ERASE_COLOUR], default_color=ADD_COLOUR, color_mode="fixed"),
                        layers=False,
                        label="Paint, then Apply (Run applies pending strokes too)",
                        elem_id="editor",
                    )
                    paint_btn = gr.Button("Apply brush", elem_id="apply-brush")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        with gr.Row():
            cutout = gr.Radio(list(CUTOUTS), value="none", label="Cut-out video", elem_id="cutout-mode")
            run_btn = gr.Button("4. Run", variant="primary", interactive=False, elem_id="run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Row():
            preview = gr.Image(label="Propagating", interactive=False, elem_id="preview")
            out_video = gr.Video(label="5. Overlay video", interactive=False, elem_id="vout")
            cut_video = gr.Video(label="Cut-out video", interactive=False, elem_id="cutout")
        with gr.Row():
            masks_zip = gr.File(label="Masks (DAVIS palette PNGs, zip)", interactive=False, elem_id="masks-zip")
            alpha_zip = gr.File(label="Transparent cut-out (RGBA PNGs, zip)", interactive=False, elem_id="alpha-zip")
        with gr.Tabs():
            with gr.Tab("6. Compare LLB and JOINT", elem_id="compare-tab"):
                compare_btn = gr.Button("Compare", interactive=False, elem_id="compare")
                compare_status = gr.Textbox(label="Comparison", interactive=False, elem_id="compare-status")
                with gr.Row():
                    cmp_llb = gr.Video(label="LLB (AFM fusion)", interactive=False, elem_id="cmp-llb")
                    cmp_joint = gr.Video(label="JOINT-style (sum fusion)", interactive=False, elem_id="cmp-joint")
                disagree = gr.LinePlot(
                    x="frame", y="disagreement", y_lim=[0, 1], label="Disagreement per frame (1 - mean IoU)"
                )
                gates = gr.LinePlot(
                    x="frame", y="gate", color="branch", y_lim=[0, 1], label="AFM gates per frame (mean over objects)"
                )
                gr.Markdown(  # the images go without a label: Gradio draws it over their titles
                    "**AFM gate channels over time**, per object, transduction left and induction right: a row per "
                    "channel, a column per frame, each cell the channel's mean gate over the search region (grey: "
                    "no gates, e.g. the reference frame)."
                )
                gate_time = gr.Image(show_label=False, interactive=False, elem_id="gate-channels")
                with gr.Row():
                    gate_slider = gr.Slider(0, 1, value=0, step=1, label="Gate maps of frame", elem_id="gate-frame")
                    gate_shown = gr.Dropdown(
                        [MOST_VARIED], value=MOST_VARIED, label="Each gate map shows", elem_id="gate-shown"
                    )
                gr.Markdown(
                    "**AFM gate maps of one frame**, per object, transduction left and induction right, in the "
                    "search region; each map's caption says which channel it shows and its range."
                )
                gate_image = gr.Image(show_label=False, interactive=False, elem_id="gate-maps")
            with gr.Tab("7. Correct", elem_id="correct-tab"):
                gr.Markdown(
                    "Pick a later frame, fix its mask above (clicks, brush or a mask PNG), then re-propagate: "
                    "the fixed frame joins the memory and the frames after it are tracked again."
                )
                correct_frame = gr.Slider(0, 1, value=0, step=1, label="Frame to correct", elem_id="correct-frame")
                repro_btn = gr.Button("Re-propagate from this frame", interactive=False, elem_id="repropagate")

        working = [view, editor, objects, name, legend_html, status]
        cleared = [preview, out_video, cut_video, masks_zip, alpha_zip, compare_status, cmp_llb, cmp_joint]
        loaded = [
            *(clip_info, input_video, ref, correct_frame, *working, *cleared),
            *(disagree, gates, gate_image, gate_time, mode),
        ]
        results = [
            *(preview, status, out_video, cut_video, masks_zip, alpha_zip),
            *(gates, gate_slider, gate_image, gate_time, gate_shown, correct_frame),
        ]
        engine = {"concurrency_id": "engine", "concurrency_limit": SETTINGS.max_jobs}
        jobs = [run_btn, compare_btn, repro_btn]
        quiet = {"api_visibility": "private", "queue": False}
        on_status = {"show_progress_on": [status]}  # progress and errors on the status line, not on the editor

        def then_buttons(event: Any) -> None:
            event.then(buttons, None, jobs, **quiet)

        then_buttons(upload.upload(load_video, upload, loaded, api_name="load_video", show_progress_on=[clip_info]))
        then_buttons(
            example.select(load_example, example, loaded, api_name="load_example", show_progress_on=[clip_info])
        )
        then_buttons(ref.release(set_reference, ref, working, api_name="set_reference", **on_status))
        then_buttons(view.select(on_select, mode, working, api_visibility="private", **on_status))
        then_buttons(click_btn.click(click, [click_x, click_y, mode], working, api_name="click", **on_status))
        then_buttons(undo_btn.click(undo_click, None, working, api_name="undo_click", **on_status))
        then_buttons(paint_btn.click(paint, editor, working, api_name="paint", **on_status))
        then_buttons(mask_file.upload(upload_mask, mask_file, working, api_name="upload_mask", **on_status))
        then_buttons(add_btn.click(add_object, name, working, api_name="add_object", **on_status))
        then_buttons(objects.input(select_object, objects, working, api_name="select_object", **on_status))
        rename_btn.click(rename_object, name, working, api_name="rename_object", **on_status)
        then_buttons(delete_btn.click(delete_object, None, working, api_name="delete_object", **on_status))
        running = run_btn.click(busy_buttons, None, jobs, **quiet)
        then_buttons(running.then(run, [cutout, editor], results, api_name="run", **on_status, **engine))
        stop_btn.click(stop, None, status, api_name="stop", concurrency_limit=None)
        correct_frame.release(show_frame, correct_frame, working, api_name="show_frame", **on_status)
        running = repro_btn.click(busy_buttons, None, jobs, **quiet)
        then_buttons(
            running.then(
                repropagate, [correct_frame, cutout, editor], results, api_name="repropagate", **on_status, **engine
            )
        )
        compare_outputs = [
            *(compare_status, cmp_llb, cmp_joint, disagree),
            *(gates, gate_slider, gate_image, gate_time, gate_shown),
        ]
        running = compare_btn.click(busy_buttons, None, jobs, **quiet)
        then_buttons(
            running.then(
                compare, None, compare_outputs, api_name="compare", show_progress_on=[compare_status], **engine
            )
        )
        gate_slider.release(gate_frame, [gate_slider, gate_shown], gate_image, api_name="gate_frame")
        gate_shown.input(gate_frame, [gate_slider, gate_shown], gate_image, api_visibility="private")
        demo.unload(close_session)
    demo.queue(default_concurrency_limit=2, max_size=SETTINGS.queue_size)
    return demo


def legend_placeholder() -> str:
    return "<p>Upload a clip or pick an example to start.</p>"


def launch(demo: gr.Blocks, **kwargs: Any) -> Any:
    """Launch with the page script that synchronises the comparison videos and the upload limit."""
    return demo.launch(head=HEAD, max_file_size=f"{SETTINGS.max_upload_mb}mb", **kwargs)


demo = build()

if __name__ == "__main__":
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
