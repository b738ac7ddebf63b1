"""The app's handlers called directly (as Gradio calls them), then the app served in-process and driven
through gradio_client. A seeded untrained checkpoint of the tiny network stands in for the trained one
(LLB_APP_CONFIG=tiny, LLB_ALLOW_UNTRAINED=1), so every output must carry the UNTRAINED stamp; clips are tiny
and generated here."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import gradio as gr
import numpy as np
import pytest
import torch
from conftest import require_shared
from PIL import Image

from llb.checkpoint import save_checkpoint
from llb.config import get_config
from llb.inference.session import Session
from llb.interactive import Click
from llb.network import LLBNet
from llb.studio.clip import Clip
from llb.studio.engine import Models
from llb.studio.results import RunResult
from llb.studio.settings import Settings
from llb.video.io import VideoWriter, ffmpeg_exe, probe
from llb.video.masks import save_palette_png

W, H, N = 160, 120, 12


def make_frames(n: int = N, w: int = W, h: int = H) -> list[np.ndarray]:
    """A red square moving right over a textured grey background."""
    rng = np.random.default_rng(0)
    texture = rng.integers(70, 110, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        frame = texture.copy()
        x, y = w // 4 + 2 * i, h // 4
        frame[y : y + h // 3, x : x + w // 4] = (220, 40, 30)
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 12) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@contextlib.contextmanager
def imported_app(env: dict[str, str]) -> Iterator[Any]:
    """The app module (re)imported under `env`; its sessions are closed and the environment restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    module = None
    try:
        module = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
        yield module
    finally:
        if module is not None:
            module.SESSIONS.close_all()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def app_env(root: Path) -> dict[str, str]:
    """Environment of a test app: seeded untrained checkpoints of both variants of the tiny network, tiny
    limits."""
    ckpt = root / "ckpt"
    for variant in ("llb", "joint"):
        path = ckpt / f"tiny-{variant}.safetensors"
        if not path.exists():
            torch.manual_seed(0)
            save_checkpoint(LLBNet(get_config("tiny", variant)), path, trained=False)
    return {
        "LLB_APP_CONFIG": "tiny",
        "LLB_CHECKPOINT_DIR": str(ckpt),
        "LLB_ALLOW_UNTRAINED": "1",
        "LLB_CROP_SIZE": "160x96",
        "LLB_MAX_FRAMES": str(N),
        "LLB_MAX_SIDE": str(W),
        "LLB_APP_TMP": str(root / "work"),
        "LLB_EXAMPLES_DIR": str(root / "examples"),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app module imported under the test environment (restored afterwards)."""
    root = tmp_path_factory.mktemp("app")
    env = app_env(root)
    (root / "examples").mkdir()
    write_video(root / "examples" / "01_dog.mp4", make_frames())
    with imported_app(env) as module:
        yield module


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "square.mp4", make_frames())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(name: str) -> SimpleNamespace:
    """Stands in for gr.Request: only the session hash is used."""
    return SimpleNamespace(session_hash=name)


def mask_of(app, req) -> np.ndarray:
    project = app.project_of(req)
    return project.labels(project.active)


def square_click(index: int = 0) -> tuple[int, int]:
    return W // 4 + 2 * index + W // 8, H // 4 + H // 6


# 1. upload


def test_upload_shows_the_first_frame_and_limits_are_explained(app, clip, tmp_path):
    out = app.load_video(str(clip), request("upload"))
    info, preview, ref = out[0], out[1], out[2]
    assert "12 frames" in info and "160x120" in info
    assert probe(preview).num_frames == N
    assert ref["maximum"] == N - 1
    assert out[4].shape == (3 * H, 3 * W, 3)  # the working view, enlarged to be clicked (see the tiny video test)
    long = write_video(tmp_path / "long.mp4", make_frames(20, 320, 240))
    info = app.load_video(str(long), request("upload"))[0]
    assert "Trimmed" in info and "20 frames" in info and "first 12 frames" in info
    assert "Downscaled" in info and "320x240" in info and "160x120" in info


def test_gif_and_zip_of_frames_are_accepted(app, tmp_path):
    frames = make_frames(6)
    gif = tmp_path / "clip.gif"
    rest = [Image.fromarray(f) for f in frames[1:]]
    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=rest, duration=80, loop=0)
    assert app.load_video(str(gif), request("formats"))[0].startswith("**clip.gif**: 6 frames")
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, frame in enumerate(frames):
            zf.writestr(f"seq/{i:03d}.png", cv2.imencode(".png", frame[..., ::-1])[1].tobytes())
        zf.writestr("__MACOSX/._000.png", b"junk")
    assert app.load_video(str(archive), request("formats"))[0].startswith("**frames.zip**: 6 frames")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.mp4", b"this is not a video", "not a video"),
        ("empty.mp4", b"", "0 bytes"),
        ("notes.txt", b"hello", "unsupported file type"),
        ("nothing.zip", None, "holds no jpg/jpeg/png"),
        ("broken.zip", b"PK\x03\x04 broken", "not a readable zip"),
    ],
)
def test_bad_uploads_give_a_message(app, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "no frames here")
    else:
        path.write_bytes(content)
    with pytest.raises(gr.Error, match=message):
        app.load_video(str(path), request("bad"))


def test_huge_frames_and_a_half_hour_video_are_cut_down(app, tmp_path):
    ffmpeg = ffmpeg_exe()
    k8 = tmp_path / "8k.mp4"
    lavfi = ["-f", "lavfi", "-i"]
    subprocess.run(
        [ffmpeg, "-v", "error", *lavfi, "testsrc=size=7680x4320:rate=2", "-t", "1", "-pix_fmt", "yuv420p", str(k8)],
        check=True,
    )
    info = app.load_video(str(k8), request("huge"))[0]
    assert "7680x4320" in info and "160x90" in info
    long = tmp_path / "30min.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", *lavfi, "testsrc=size=64x48:rate=1", "-t", "1800", "-pix_fmt", "yuv420p", str(long)],
        check=True,
    )
    info = app.load_video(str(long), request("huge"))[0]
    assert "1800 frames" in info and "30:00.0" in info and "first 12 frames" in info


def test_example_clip_loads_with_credit(app):
    assert list(app.EXAMPLES) == ["Dog and ball (3 s)", "Letter blocks (3 s)", "Juggling (3.75 s)", "Dog and ball"]
    assert "SAM 2" in app.EXAMPLES["Dog and ball"].credit_line()
    assert "12 frames" in app.load_example("Dog and ball", request("example"))[0]
    with pytest.raises(gr.Error, match="unknown example"):
        app.load_example("nope", request("example"))


def events(demo: gr.Blocks) -> dict[str, Any]:
    """The app's event handlers by function name (the last one of a name wins)."""
    return {fn.name: fn for fn in demo.fns.values()}


def test_a_new_clip_clears_the_previous_results_and_the_click_mode(app, clip):
    req = request("new-clip")
    app.load_video(str(clip), req)
    with pytest.raises(gr.Error, match="click the object first"):
        app.click(5, 5, "background", req)  # no object yet: a message, not an empty object
    assert not app.project_of(req).objects
    app.click(*square_click(), "object", req)
    app.click(5, 5, "background", req)
    out = app.load_video(str(clip), req)
    assert out[-len(app.CLEARED) :] == app.CLEARED and out[-1] == "object"
    demo = app.build()
    loading = events(demo)["load_video"]
    ids = [c._id for c in loading.outputs[-len(app.CLEARED) :]]
    by_id = {b._id: b for b in demo.blocks.values()}
    shown = {by_id[i].elem_id for i in ids}
    assert {"preview", "vout", "cutout", "masks-zip", "cmp-llb", "cmp-joint", "gate-maps", "gate-channels"} <= shown
    assert "mode" in shown


def test_run_compare_and_repropagate_wait_for_a_clip_an_object_and_the_running_job(app, clip):
    req = request("buttons")

    def enabled() -> list[bool]:
        return [u["interactive"] for u in app.buttons(req)]

    assert enabled() == [False, False, False]  # nothing loaded
    app.load_video(str(clip), req)
    assert enabled() == [False, False, False]  # no object
    app.click(*square_click(), "object", req)
    assert enabled() == [True, True, False]  # nothing to re-propagate yet
    project = app.project_of(req)
    project.job = "run"
    assert enabled() == [False, False, False]  # one job at a time
    project.job = None
    project.result = RunResult("llb", project.workdir, trained=False)
    assert enabled() == [True, True, True]
    demo = app.build()
    fns = events(demo)
    for name in ("run", "repropagate", "compare"):
        first = next(f for f in demo.fns.values() if f._id == fns[name].trigger_after)
        assert first.name == "busy_buttons" and not first.queue  # disabled at once, before the job queues
        after = [f for f in demo.fns.values() if f.trigger_after == fns[name]._id]
        assert [f.name for f in after] == ["buttons"]
    run_button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "run")
    assert run_button.interactive is False


def test_a_bad_upload_is_one_message_in_the_upload_boxs_words(app, tmp_path, caplog):
    from llb.studio.clip import UPLOAD_FORMATS
    from llb.video.io import UPLOAD_HINT

    demo = app.build()
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "upload")
    assert UPLOAD_FORMATS in box.label
    # the formats the message names are the types the box accepts, and the video reader's hint names the same videos
    videos = re.search(r"a video \(([a-z0-9, ]+)\) or a zip of ", UPLOAD_FORMATS).group(1).split(", ")
    assert sorted(box.file_types) == sorted([*(f".{v}" for v in videos), ".zip"])
    assert re.search(r"a video \(([a-z0-9, ]+)\)", UPLOAD_HINT).group(1).split(", ") == videos
    for name, content in (("notes.txt", b"hello"), ("notes.mp4", b"not a video"), ("empty.mp4", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level("INFO", logger="llb.app"), pytest.raises(gr.Error) as err:
            app.load_video(str(path), request("bad-formats"))
        assert err.value.message.endswith(f"upload {UPLOAD_FORMATS}") and not err.value.print_exception
        assert [r.exc_info for r in caplog.records] == [None]  # one line in the server's log, no traceback
    by_id = {b._id: b for b in demo.blocks.values()}
    for name in ("load_video", "load_example"):
        assert [by_id[c._id].elem_id for c in events(demo)[name].show_progress_on] == ["clip-info"]
    # an example is loaded on the dropdown's select: its input event fired twice per pick (two loads, two toasts)
    assert [(by_id[i].elem_id, e) for i, e in events(demo)["load_example"].targets] == [("example", "select")]


def test_working_frame_events_show_progress_on_the_status_line(app):
    """The brush editor is an output of Apply: a spinner on it could stay after the new value came."""
    demo = app.build()
    by_id = {b._id: b for b in demo.blocks.values()}
    for name in ("paint", "click", "on_select", "undo_click", "upload_mask", "add_object", "delete_object"):
        assert [by_id[c._id].elem_id for c in events(demo)[name].show_progress_on] == ["status"], name


def test_gate_maps_have_a_colour_scale(app, tmp_path):
    result = RunResult("llb", tmp_path, trained=True)
    ramp = np.linspace(0, 1, 20, dtype=np.float32)
    gates = np.full((2, 4, 12, 20), 0.5, np.float16)
    gates[0, 2], gates[1] = np.tile(ramp, (12, 1)), 0  # transduction: channel 2 varies; induction shut
    result.gates = {3: {1: gates}}
    heat = app.heatmaps(result, 3, {1: "dog"})
    bar = heat[-34:]
    assert heat.shape[1] == 2 * 320 + 6 and heat.shape[0] == 192 + 34
    dark, bright = bar[5, 12].astype(int), bar[5, -12].astype(int)
    assert bright[1] > 200 and dark[1] < 30  # viridis: dark purple at 0 (left), yellow at 1 (right)
    assert np.abs(heat[100, 2].astype(int) - dark).max() < 30  # the map's 0 has the scale's 0 colour


def test_a_tiny_video_is_shown_enlarged_and_clicks_map_back(app, tmp_path):
    tiny = write_video(tmp_path / "tiny.mp4", make_frames(3, 64, 48))
    req = request("tiny")
    out = app.load_video(str(tiny), req)
    assert out[4].shape == (48 * 7, 64 * 7, 3)
    x, y = 64 // 4 + 64 // 8, 48 // 4 + 48 // 6
    working = app.on_select("object", SimpleNamespace(index=[x * 7 + 3, y * 7 + 5]), req)
    assert app.project_of(req).clicks(0) == [Click(x, y, True)]
    assert working[0].shape == (48 * 7, 64 * 7, 3) and mask_of(app, req)[y, x] == 1


# 2-3. reference frame and objects


def test_clicks_brush_and_objects(app, clip):
    req = request("objects")
    app.load_video(str(clip), req)
    x, y = square_click()
    out = app.click(x, y, "object", req)
    labels = mask_of(app, req)
    assert labels[y, x] == 1 and 0 < (labels == 1).mean() < 0.5
    assert "object 1" in out[4]  # the legend
    # the square's pixels, not the background, make up most of the mask
    square = np.zeros((H, W), bool)
    square[H // 4 : H // 4 + H // 3, W // 4 : W // 4 + W // 4] = True
    assert (labels == 1)[square].mean() > 0.8 and (labels == 1)[~square].mean() < 0.05
    app.click(5, 5, "background", req)
    assert mask_of(app, req)[5, 5] == 0
    app.undo_click(req)
    # brush: a green stroke adds, a red one erases
    layer = np.zeros((H, W, 4), np.uint8)
    layer[100:110, 10:40] = (34, 197, 94, 255)
    layer[y - 2 : y + 3, x - 2 : x + 3] = (239, 68, 68, 255)
    app.paint({"background": None, "layers": [layer], "composite": None}, req)
    labels = mask_of(app, req)
    assert (labels[100:110, 10:40] == 1).all() and (labels[y - 2 : y + 3, x - 2 : x + 3] == 0).all()
    # a second object, renamed, then deleted
    app.add_object("", req)
    app.click(10, 105, "object", req)
    assert mask_of(app, req)[105, 10] == 2
    app.rename_object("ball", req)
    assert app.project_of(req).objects == {1: "object 1", 2: "ball"}
    app.select_object(1, req)
    assert app.project_of(req).current == 1
    app.select_object(2, req)
    app.delete_object(req)
    assert 2 not in np.unique(mask_of(app, req))
    with pytest.raises(gr.Error, match="empty"):
        app.rename_object("  ", req)
    with pytest.raises(gr.Error, match="outside"):
        app.click(W + 5, 3, "object", req)


def test_mask_upload_and_reference_frame(app, clip, tmp_path):
    req = request("mask")
    app.load_video(str(clip), req)
    app.set_reference(3, req)
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    labels[60:90, 100:130] = 2
    save_palette_png(tmp_path / "m.png", labels)
    app.upload_mask(str(tmp_path / "m.png"), req)
    project = app.project_of(req)
    assert project.reference == 3 and np.array_equal(project.labels(3), labels)
    assert set(project.prompts()) == {3}
    save_palette_png(tmp_path / "source.png", cv2.resize(labels, (2 * W, 2 * H), interpolation=cv2.INTER_NEAREST))
    app.upload_mask(str(tmp_path / "source.png"), req)  # drawn on the source video, twice the processed size
    assert np.array_equal(project.labels(3), labels)
    Image.new("L", (50, 50)).save(tmp_path / "small.png")
    with pytest.raises(gr.Error, match=r"50x50.*same aspect ratio"):
        app.upload_mask(str(tmp_path / "small.png"), req)
    with pytest.raises(gr.Error, match="outside"):
        app.set_reference(99, req)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def still_clip(folder: Path, frames: list[np.ndarray]) -> Clip:
    """A prepared clip made of `frames` (RGB) without the upload path, for frames bigger than the test limits."""
    (folder / "frames").mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / "frames" / f"{i:05d}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    h, w = frames[0].shape[:2]
    return Clip(folder / "frames", folder / "input.mp4", 12.0, len(frames), w, h, "still.mp4", "")


def propagated(app, req, folder: Path, clip: Clip, labels: dict[int, np.ndarray]) -> Any:
    """`clip` loaded in the session with a finished run whose masks are `labels` (frame -> label map)."""
    project = app.project_of(req)
    with project.lock:
        project.set_clip(clip)
        project.add_object()
        project.result = RunResult("llb", folder / "run", trained=False)
    project.result.folder.mkdir()
    for index, frame_labels in labels.items():
        project.result.save(index, frame_labels)
    return project


def test_a_background_click_on_a_later_frame_trims_the_propagated_mask(app, tmp_path):
    """DAVIS car-shadow, frame 30 at 640x360: the propagated mask is the car plus a false positive glued under
    it; one background click on the false positive must remove it and keep the car (it used to erase all)."""
    davis = require_shared("data", "davis2017-dev")
    image = cv2.resize(
        cv2.imread(str(davis / "JPEGImages" / "car-shadow" / "00030.jpg"))[..., ::-1], (640, 360), cv2.INTER_AREA
    )
    truth = np.array(Image.open(davis / "Annotations" / "car-shadow" / "00030.png"))
    car = cv2.resize(truth, (640, 360), interpolation=cv2.INTER_NEAREST) == 1
    ys, xs = np.nonzero(car)
    cx, bottom = (xs.min() + xs.max()) // 2, ys.max()
    wrong = car.copy()
    wrong[bottom - 5 : bottom + 30, cx - 40 : cx + 40] = True
    req = request("later-frame")
    project = propagated(app, req, tmp_path, still_clip(tmp_path, [image, image]), {1: wrong.astype(np.uint8)})
    app.show_frame(1, req)
    assert iou(mask_of(app, req) == 1, car) < 0.9
    app.click(int(cx), int(bottom + 18), "background", req)
    fixed = mask_of(app, req) == 1
    assert iou(fixed, car) > 0.95 and not fixed[bottom + 18, cx]
    assert project.prompts()[1][bottom + 18, cx] == 0  # the corrected mask is what re-propagation starts from


def test_clicks_for_a_second_object_keep_out_of_the_first(app, tmp_path):
    """A small ball held against a big object: a click on the ball gives object 2 the ball, not the big
    object's pixels, and object 1 keeps all of its own."""
    rng = np.random.default_rng(1)
    frame = rng.integers(70, 110, (H, W, 3), dtype=np.uint8)
    frame[20:110, 40:110] = (200, 60, 50)  # the "person"
    frame[50:62, 104:116] = (230, 220, 40)  # the "ball", overlapping its edge
    person = np.zeros((H, W), bool)
    person[20:110, 40:110] = True
    person[50:62, 104:110] = False
    ball = np.zeros((H, W), bool)
    ball[50:62, 104:116] = True
    req = request("keep-out")
    project = app.project_of(req)
    with project.lock:
        project.set_clip(still_clip(tmp_path, [frame]))
        project.set_labels(0, person.astype(np.uint8))
    app.add_object("ball", req)
    app.click(109, 56, "object", req)
    labels = mask_of(app, req)
    assert (labels[person] == 1).all()  # object 1 keeps every pixel
    assert labels[56, 109] == 2 and (labels == 2).sum() < 3 * ball.sum()
    assert iou(labels == 2, ball) > 0.5
    app.click(60, 60, "object", req)  # a positive click on object 1 says "these pixels too"
    assert mask_of(app, req)[60, 60] == 2


def test_sessions_are_isolated(app, clip):
    a, b = request("alice"), request("bob")
    app.load_video(str(clip), a)
    app.click(*square_click(), "object", a)
    with pytest.raises(gr.Error, match="upload a video"):
        app.click(10, 10, "object", b)
    app.load_video(str(clip), b)
    assert not app.project_of(b).objects and app.project_of(a).objects
    folder_a = app.project_of(a).workdir
    assert folder_a != app.project_of(b).workdir
    app.close_session(a)
    assert not folder_a.exists()


# 4-7. runs


def hop_threads(stream: Iterator) -> list:
    """Consume a streaming handler as Gradio does: each step may run on another worker thread."""
    out = []
    while True:
        with ThreadPoolExecutor(1) as pool:
            try:
                out.append(pool.submit(next, stream).result())
            except StopIteration:
                return out


def test_run_without_objects_or_checkpoint_gives_a_message(app, clip, tmp_path, monkeypatch):
    req = request("norun")
    with pytest.raises(gr.Error, match="upload a video"):
        list(app.run("none", None, req))
    app.load_video(str(clip), req)
    with pytest.raises(gr.Error, match="define at least one object"):
        list(app.run("none", None, req))
    monkeypatch.setenv("LLB_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr("llb.checkpoint.LOCAL_DIRS", ())  # hide the shipped checkpoints
    monkeypatch.setenv("LLB_ALLOW_UNTRAINED", "0")
    problem = Models(Settings.from_env()).problem("llb")
    assert "No trained LLB checkpoint" in problem and "checkpoints/" in problem
    monkeypatch.setattr(app, "MODELS", Models(Settings.from_env()))
    with pytest.raises(gr.Error, match="No trained"):
        list(app.run("none", None, req))
    assert "No trained" in app.model_status()


@pytest.mark.slow
def test_run_stop_correct_and_compare(app, clip, monkeypatch):
    req = request("run")
    app.load_video(str(clip), req)
    app.set_reference(2, req)
    app.click(*square_click(2), "object", req)
    steps = hop_threads(app.run("blur background", None, req))
    previews = [s[0] for s in steps[:-1] if isinstance(s[0], np.ndarray)]
    assert previews and previews[0].shape == (H, W, 3)
    _, status, overlay, cut, masks, *_ = steps[-1]
    assert status.startswith("done: 12 frames") and "frames/s on CPU" in status
    assert probe(overlay).num_frames == N and probe(cut).num_frames == N
    with zipfile.ZipFile(masks) as zf:
        names = zf.namelist()
        assert len([n for n in names if n.endswith(".png")]) == N  # frames 0-1 from the backward pass
        assert "UNTRAINED" in zf.read("README.txt").decode()
    assert "UNTRAINED" in Path(masks).name
    project = app.project_of(req)
    first = project.result
    assert first.trained is False and sorted(first.gates) == [i for i in range(N) if i != 2]  # not on the prompt
    # the stamp is on every frame: the top band is darkened
    frame0 = cv2.VideoCapture(overlay).read()[1]
    assert frame0[:8].mean() < project.clip.frame(0)[:8].mean()

    # stop after a few frames: what was done is kept and rendered (every frame previewed, so that the stop comes
    # after two frames however fast the network runs)
    monkeypatch.setattr(app, "PREVIEW_EVERY_S", 0.0)
    done = []
    for out in app.run("none", None, req):
        done.append(out)
        if len(done) == 2:
            app.stop(req)
    assert done[-1][1].startswith("stopped")
    assert 0 < len(project.result.frames()) < N

    # correct frame 8 and re-propagate from it: frames before keep their masks, frame 8 is the fix
    list(app.run("none", None, req))
    before = {i: project.result.labels(i) for i in range(8)}
    app.show_frame(8, req)
    layer = np.zeros((H, W, 4), np.uint8)
    layer[0:20, 0:20] = (34, 197, 94, 255)
    fixed, starts = None, []
    propagate = Session.propagate
    monkeypatch.setattr(Session, "propagate", lambda self, **kw: starts.append(kw) or propagate(self, **kw))
    for out in app.repropagate(8, "none", {"layers": [layer]}, req):
        fixed = out
    assert starts == [{"start": 8, "reverse": False}]  # the run's session resumes at 8: no frame tracked again
    assert fixed[1].startswith("done")
    assert all(np.array_equal(project.result.labels(i), before[i]) for i in range(8))
    assert (project.result.labels(8)[0:20, 0:20] == 1).all()
    with pytest.raises(gr.Error, match="corrections go on frames"):
        app.show_frame(1, req)

    # compare: two videos, a disagreement per frame, gate maps
    steps = list(app.compare(req))
    status, llb, joint, disagreement, gates, _, heat, channels, shown = steps[-1]
    assert "compared on 12 frames" in status
    assert probe(llb).num_frames == N and probe(joint).num_frames == N
    assert list(disagreement["frame"]) == list(range(N)) and disagreement["disagreement"].between(0, 1).all()
    assert set(gates["branch"]) == {"transduction", "induction"}
    assert heat.ndim == 3 and heat.shape[1] == 2 * 320 + 6
    assert app.gate_frame(5, None, req).shape == heat.shape
    dim = project.compare["llb"].gates[5][1].shape[1]
    assert shown["value"] == app.MOST_VARIED and shown["choices"][2:] == [f"channel {c}" for c in range(dim)]
    assert channels.shape[1] == 2 * 320 + 6 and channels.shape[0] > dim * 5  # a row per channel, 5 pixels each
    assert app.gate_frame(5, "channel 3", req).shape == heat.shape
    with pytest.raises(gr.Error, match=f"channel 0..{dim - 1}"):
        app.gate_frame(5, f"channel {dim}", req)


# the API


@pytest.mark.slow
def test_api_through_gradio_client(app, clip):
    from gradio_client import Client, handle_file

    demo = app.build()
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
        assert {"/load_video", "/click", "/paint", "/run", "/stop", "/compare", "/repropagate"} <= endpoints
        assert "/on_select" not in endpoints
        info = client.predict(handle_file(str(clip)), api_name="/load_video")[0]
        assert "12 frames" in info
        x, y = square_click()
        status = client.predict(x, y, "object", api_name="/click")[-1]
        assert "1 object" in status
        job = client.submit("none", None, api_name="/run")
        statuses = [out[1] for out in job]
        assert len(statuses) >= 3 and statuses[-1].startswith("done: 12 frames")
        overlay = job.result()[2]
        assert probe(overlay["video"] if isinstance(overlay, dict) else overlay).num_frames == N
    finally:
        demo.close()
