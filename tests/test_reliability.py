"""The app under careless and hostile use: sessions clicking at once, one- and two-frame clips, a load during a
run, zip bombs, folders left by killed servers, piled-up outputs, too many objects, raw messages and markup in
names. Handlers are called directly, as Gradio calls them, with a seeded untrained network (see test_app)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from test_app import H, N, W, app_env, imported_app, make_frames, request, square_click, write_video

from llb.studio.project import Sessions
from llb.video.io import probe
from llb.video.masks import save_palette_png


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app module imported under the test environment (restored afterwards)."""
    root = tmp_path_factory.mktemp("reliable")
    env = app_env(root)
    with imported_app(env) as module:
        yield module


def shifted_clip(folder: Path, shift: int, n: int = 3) -> Path:
    """A clip whose square sits `shift` pixels further right (so that each session segments another image)."""
    return write_video(folder / f"shift{shift}.mp4", [np.roll(f, shift, axis=1) for f in make_frames(n)])


def slider_ok(update: dict) -> None:
    """A slider update that Gradio can apply (it refuses minimum >= maximum with a bare 'Error')."""
    gr.Slider(**{k: v for k, v in update.items() if k != "__type__"})


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# 1. clicks at the same moment


def click_masks(app, name: str, clip: Path, shift: int, barrier: threading.Barrier | None = None) -> list:
    """Load `clip` in session `name`, then three clicks; the label map after each (all at once with `barrier`)."""
    req = request(name)
    app.load_video(str(clip), req)
    x, y = square_click()
    clicks = [(x + shift, y, "object"), ((x + shift + 60) % W, 5, "background"), (x + shift + 8, y + 10, "object")]
    masks = []
    for cx, cy, mode in clicks:
        if barrier is not None:
            barrier.wait(timeout=120)
        app.click(cx, cy, mode, req)
        project = app.project_of(req)
        masks.append(project.labels(project.active))
    return masks


def test_concurrent_clicks_equal_the_solo_clicks(app, tmp_path):
    shifts = [0, 17, 34, 51]
    clips = [shifted_clip(tmp_path, s) for s in shifts]
    solo = [click_masks(app, f"solo{i}", clip, s) for i, (clip, s) in enumerate(zip(clips, shifts))]
    barrier = threading.Barrier(len(shifts))
    together: list = [None] * len(shifts)

    def session(i: int) -> None:
        together[i] = click_masks(app, f"together{i}", clips[i], shifts[i], barrier)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(shifts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    same = [np.array_equal(a, b) for s, t in zip(solo, together) for a, b in zip(s, t, strict=True)]
    assert len(same) == 12 and all(same), f"{sum(same)} of {len(same)} concurrent masks equal the solo ones"


# 2. one- and two-frame clips


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_frame_clips_load_click_and_run(app, tmp_path, n):
    req = request(f"short{n}")
    out = app.load_video(str(write_video(tmp_path / "short.mp4", make_frames(n))), req)
    assert f"{n} frames" in out[0]
    slider_ok(out[2])
    slider_ok(out[3])
    app.click(*square_click(), "object", req)
    steps = list(app.run("none", None, req))
    _, status, overlay, _, masks, _alpha, _, gate_slider, _, _, _, correct = steps[-1]
    assert status.startswith(f"done: {n} frames")
    slider_ok(gate_slider)
    slider_ok(correct)
    assert probe(overlay).num_frames == n
    with zipfile.ZipFile(masks) as zf:
        assert len([m for m in zf.namelist() if m.endswith(".png")]) == n
    assert (app.project_of(req).result.labels(0) == 1).any()


# 3. a load while a run goes


def test_a_load_during_a_run_is_refused_and_the_run_keeps_its_frames(app, tmp_path):
    req = request("busy")
    app.load_video(str(write_video(tmp_path / "clip.mp4", make_frames())), req)
    app.click(*square_click(), "object", req)
    stream = app.run("none", None, req)
    next(stream)
    with pytest.raises(gr.Error, match="run is going"):
        app.load_video(str(shifted_clip(tmp_path, 20)), req)
    steps = list(stream)
    assert steps[-1][1].startswith(f"done: {N} frames")
    assert probe(steps[-1][2]).num_frames == N
    assert "3 frames" in app.load_video(str(shifted_clip(tmp_path, 20)), req)[0]  # free again once it ends


# 4. zip bombs


def test_a_zip_bomb_is_refused_before_it_is_unpacked_and_leaves_nothing(app, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("00001.png", "w") as member:
        for _ in range(200):
            member.write(bytes(2**20))  # 200 MB of zeros, about 200 kB packed
    assert bomb.stat().st_size < 2**20
    req = request("bomb")
    workdir = app.project_of(req).workdir
    opened: list[str] = []
    open_member = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return open_member(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    with pytest.raises(gr.Error, match=r"00001\.png unpacks to 200 MB"):
        app.load_video(str(bomb), req)
    assert opened == []  # refused from the archive's directory: no member was read
    assert files_under(workdir) == []


def test_a_bad_upload_after_a_good_one_leaves_only_the_good_clip(app, tmp_path):
    req = request("cleanup")
    app.load_video(str(shifted_clip(tmp_path, 0)), req)
    workdir = app.project_of(req).workdir
    before = files_under(workdir)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("00000.png", b"not a png")
    with pytest.raises(gr.Error, match=r"00000\.png"):
        app.load_video(str(broken), req)
    assert files_under(workdir) == before
    assert app.project_of(req).clip.num_frames == 3  # the good clip is still there


# 5. disk


def test_repeated_runs_keep_only_the_outputs_the_session_can_reach(app, tmp_path):
    req = request("pile")
    app.load_video(str(shifted_clip(tmp_path, 0)), req)
    app.click(*square_click(), "object", req)
    workdir = app.project_of(req).workdir
    counts = []
    for cutout in ("none", "blur background", "none"):
        list(app.run(cutout, None, req))
        counts.append(len(files_under(workdir)))
    assert counts[2] == counts[0], counts
    last = list(app.run("none", None, req))[-1]
    assert Path(last[2]).is_file() and Path(last[4]).is_file()  # what the page shows is there


def start_server_process(root: Path, mode: str) -> subprocess.Popen:
    """A process that opens a session under `root` as the app does, says 'ready', then waits to be killed."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom llb.studio.project import Sessions\n"
        f"sessions = Sessions(Path({str(root)!r}), 3600)\n"
        f"{'sessions.close_on_exit()' if mode == 'term' else ''}\n"
        "sessions.get('a')\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_folders_of_killed_servers_are_swept_at_start_and_sigterm_cleans_up(tmp_path):
    root = tmp_path / "work"
    proc = start_server_process(root, "term")
    assert any(p.name.startswith("session-") for p in root.rglob("*"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not any(p.name.startswith("session-") for p in root.rglob("*"))

    proc = start_server_process(root, "kill")
    proc.kill()
    proc.wait(timeout=30)
    assert any(p.name.startswith("session-") for p in root.rglob("*"))
    sessions = Sessions(root, 3600)  # the next start sweeps what the killed one left
    assert not any(p.name.startswith("session-") for p in root.rglob("*"))
    live = sessions.get("b").workdir
    Sessions(root, 3600)  # ... but never a running server's folders
    assert live.is_dir()
    sessions.close_all()


def test_idle_sessions_are_swept_without_a_request(tmp_path):
    sessions = Sessions(tmp_path / "work", ttl_s=0.3, sweep_every_s=0.1)
    folder = sessions.get("rest").workdir
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not folder.exists()
    sessions.close_all()


# 6. memory


def test_objects_per_run_are_bounded_with_a_message(app, tmp_path):
    req = request("crowd")
    app.load_video(str(shifted_clip(tmp_path, 0)), req)
    limit = app.SETTINGS.max_objects
    assert limit < 20  # on the CPU
    for _ in range(limit):
        app.add_object("", req)
    with pytest.raises(gr.Error, match=f"at most {limit} objects"):
        app.add_object("", req)
    labels = np.zeros((H, W), np.uint8)
    for i in range(limit + 1):
        labels[i * 4 : i * 4 + 3, :10] = i + 1
    save_palette_png(tmp_path / "many.png", labels)
    app.load_video(str(shifted_clip(tmp_path, 0)), request("crowd2"))
    with pytest.raises(gr.Error, match=f"at most {limit} objects"):
        app.upload_mask(str(tmp_path / "many.png"), request("crowd2"))


# 7-8. messages and names


def test_messages_are_plain_words_without_server_paths(app, tmp_path):
    req = request("words")
    app.load_video(str(shifted_clip(tmp_path, 0)), req)
    calls = [
        lambda: app.click("abc", 10, "object", req),
        lambda: app.click(float("nan"), 10, "object", req),
        lambda: app.set_reference(float("nan"), req),
        lambda: app.set_reference("first", req),
        lambda: app.show_frame(math.inf, req),
        lambda: app.select_object("x", req),
        lambda: app.gate_frame(float("nan"), None, req),
        lambda: app.load_video(str(tmp_path / "gone.mp4"), req),
        lambda: app.upload_mask(str(tmp_path / "gone.png"), req),
        lambda: app.rename_object(None, req),
        lambda: list(app.run("sideways", None, req)),
    ]
    for call in calls:
        with pytest.raises(gr.Error) as err:
            call()
        message = err.value.message
        for raw in ("invalid literal", "NaN", "int()", "float()", "Errno", "NoneType", "Something went wrong"):
            assert raw not in message, message
        assert str(tmp_path) not in message and "/tmp" not in message, message
    problem = app.MODELS.problem("llb")
    assert problem is None or "/" not in problem.replace("checkpoints/", "")


def test_object_names_are_shown_as_text_not_markup(app, tmp_path):
    req = request("xss")
    app.load_video(str(shifted_clip(tmp_path, 0)), req)
    app.add_object("<img src=x onerror=alert(1)>", req)
    legend = app.rename_object("<b>dog</b> & <i>ball</i>", req)[4]
    assert "<b>" not in legend and "&lt;b&gt;dog&lt;/b&gt; &amp; &lt;i&gt;ball&lt;/i&gt;" in legend
    assert "<img" not in legend


# the load test, small


@pytest.mark.slow
def test_sessions_at_once_through_the_server_equal_their_solo_runs(tmp_path):
    from load_app import load_test

    shifts = [0, 17, 34, 51]
    clips = [shifted_clip(tmp_path, s) for s in shifts]
    clicks = [(square_click()[0] + s, square_click()[1]) for s in shifts]
    figures = load_test(app_env(tmp_path), clips, clicks, cycles=1, log=tmp_path / "server.log")
    print("load test:", figures)
    assert figures["identical_to_solo"] == figures["sessions_run"] == 4
    assert figures["served_after"] == 1.0
    assert figures["sessions_left"] == 0 and figures["disk_after_sigterm_mb"] == 0.0
    assert figures["rss_growth_mb"] < 500
