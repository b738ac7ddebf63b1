"""What the app hands back and offers: the shipped example clips (on a fresh clone too) and the exports of a run."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from llb.studio.clip import Clip, prepare_clip
from llb.studio.results import (
    CHANNEL_MEAN,
    MOST_VARIED,
    TRANSPARENT,
    RunResult,
    gate_channels,
    gate_choices,
    gate_heatmaps,
    gate_means,
    render,
)
from llb.studio.settings import Settings
from llb.video.io import VideoWriter, ffmpeg_exe, has_audio, probe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("dog.mp4", "blocks.mp4", "juggle.mp4")


def test_shipped_example_clips_are_short_small_and_credited() -> None:
    listed = {c["file"]: c for c in json.loads((REPO / "examples" / "examples.json").read_text())["clips"]}
    sources = (REPO / "examples" / "SOURCES.md").read_text()
    for name in SHIPPED:
        path = REPO / "examples" / name
        info = probe(path)
        assert info.num_frames / info.fps <= 5 and info.width <= 854 and info.height <= 480
        assert info.num_frames <= 90  # within the CPU app's frame limit: no trimming notice
        assert path.stat().st_size < 1.5 * 2**20
        assert listed[name]["license"] == "Apache-2.0" and "sam2" in listed[name]["source"]
        assert f"`{name}`" in sources and "Apache-2.0" in sources


def test_a_fresh_clone_without_shared_lists_the_shipped_examples(tmp_path: Path) -> None:
    """The package and examples/ copied alone (no ../shared beside them): the three shipped clips are offered and
    found inside the copy; the clips of ../shared are not listed there."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "llb", clone / "llb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "examples", clone / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLB_")}
    env["PYTHONPATH"] = str(clone)
    script = (
        "from llb.studio.examples import example_path, load_examples\n"
        "from llb.studio.settings import Settings\n"
        "s = Settings.from_env()\n"
        "for e in load_examples(s): print(e.title, example_path(e, s), sep='|')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=clone, env=env, capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in out.stdout.splitlines()]
    assert [title for title, _ in rows] == ["Dog and ball (3 s)", "Letter blocks (3 s)", "Juggling (3.75 s)"]
    assert [Path(path) for _, path in rows] == [clone / "examples" / name for name in SHIPPED]
    assert not (tmp_path / "shared").exists()


FPS, N, SRC = 12.0, 10, (854, 480)


def _disc(width: int, height: int, t: int) -> np.ndarray:
    """(H, W) signed distance inside a disc moving right: > 0 inside."""
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy, r = width * (0.3 + 0.03 * t), height * 0.5, height * 0.3
    return r - np.hypot((xx + 0.5) - cx, (yy + 0.5) - cy)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An 854x480 clip of 14 frames at 12 fps with a 440 Hz tone as its sound."""
    folder = tmp_path_factory.mktemp("source")
    with VideoWriter(folder / "silent.mp4", FPS) as writer:
        for t in range(N + 4):
            frame = np.full((SRC[1], SRC[0], 3), 90, np.uint8)
            frame[_disc(*SRC, t) > 0] = (200, 40, 30)
            writer.write(frame)
    out = folder / "clip.mp4"
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(folder / "silent.mp4"), "-f", "lavfi", "-i"]
    cmd += ["sine=frequency=440:sample_rate=48000", "-t", f"{(N + 4) / FPS}", "-c:v", "copy", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert has_audio(out)
    return out


def _duration(path: Path, stream: str) -> float:
    """Seconds of the first `stream` ("audio" or "video") of a file, by decoding it."""
    select = ["-map", "0:a:0"] if stream == "audio" else ["-map", "0:v:0"]
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path), *select, "-f", "null", "-"], capture_output=True, text=True
    ).stderr
    h, m, s = re.findall(r"time=(\d+):(\d+):([\d.]+)", out)[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def _run_result(clip: Clip, folder: Path) -> RunResult:
    """A run whose probabilities are a soft disc at the processed size (what the engine saves)."""
    result = RunResult("llb", folder, trained=True)
    folder.mkdir()
    for t in range(clip.num_frames):
        probs = 1 / (1 + np.exp(-_disc(clip.width, clip.height, t) / 1.5))  # (h, w) in (0, 1)
        result.save(t, (probs > 0.5).astype(np.uint8) * 2, probs[None].astype(np.float32), [2])
    return result


def test_results_come_back_at_the_source_resolution_with_its_sound(source: Path, tmp_path: Path) -> None:
    settings = replace(Settings.from_env(), max_side=320, max_frames=N)
    clip = prepare_clip(source, tmp_path, settings)
    assert (clip.width, clip.height, clip.num_frames) == (320, 180, N) and clip.original_size == SRC
    assert "Trimmed" in clip.notice and "exported at 854x480" in clip.notice
    result = _run_result(clip, tmp_path / "run")
    paths = render(result, clip, tmp_path / "out", "blur background")
    for video in (paths["overlay"], paths["cutout"]):
        info = probe(video)
        assert (info.width, info.height, info.num_frames) == (*SRC, N)
        assert has_audio(video) and abs(_duration(video, "audio") - N / FPS) < 0.1  # the trimmed clip's sound
    with zipfile.ZipFile(paths["zip"]) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        assert len(names) == N and "at 854x480" in zf.read("README.txt").decode()
        masks = [np.array(Image.open(io.BytesIO(zf.read(n)))) for n in names]
    # the argmax of upsampled probabilities follows the true disc closer than stretched labels do
    for t in (0, N - 1):
        truth = _disc(*SRC, t) > 0
        stretched = cv2.resize(result.labels(t), SRC, interpolation=cv2.INTER_NEAREST) == 2
        assert masks[t].shape == (SRC[1], SRC[0]) and set(np.unique(masks[t])) == {0, 2}
        assert np.count_nonzero((masks[t] == 2) != truth) < 0.6 * np.count_nonzero(stretched != truth)


def test_transparent_cutout_is_a_webm_with_alpha_and_a_zip_of_rgba_pngs(source: Path, tmp_path: Path) -> None:
    settings = replace(Settings.from_env(), max_side=320, max_frames=N)
    clip = prepare_clip(source, tmp_path, settings)
    result = _run_result(clip, tmp_path / "run")
    paths = render(result, clip, tmp_path / "out", TRANSPARENT)
    webm = paths["cutout"]
    assert webm.suffix == ".webm" and has_audio(webm)
    cmd = [ffmpeg_exe(), "-v", "error", "-c:v", "libvpx-vp9", "-i", str(webm), "-frames:v", "1"]
    raw = subprocess.run([*cmd, "-f", "rawvideo", "-pix_fmt", "rgba", "-"], capture_output=True, check=True).stdout
    alpha = np.frombuffer(raw, np.uint8).reshape(SRC[1], SRC[0], 4)[..., 3]
    truth = _disc(*SRC, 0) > 0
    assert np.mean((alpha > 127) == truth) > 0.99  # opaque on the object, transparent elsewhere
    with zipfile.ZipFile(paths["alpha"]) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        assert len(names) == N
        image = Image.open(io.BytesIO(zf.read(names[0])))
        assert image.mode == "RGBA" and image.size == SRC
        rgba = np.array(image)
    with zipfile.ZipFile(paths["zip"]) as zf:
        mask = np.array(Image.open(io.BytesIO(zf.read("masks/00000.png"))))
    assert np.array_equal(rgba[..., 3] == 255, mask == 2) and set(np.unique(rgba[..., 3])) == {0, 255}


def test_a_source_without_sound_and_a_frame_folder_export_without_audio(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):
        Image.fromarray(np.full((240, 400, 3), 60 * t, np.uint8)).save(folder / f"{t}.png")
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for t in range(4):
            zf.write(folder / f"{t}.png", f"{t}.png")
    clip = prepare_clip(archive, tmp_path / "work", replace(Settings.from_env(), max_side=200))
    assert (clip.width, clip.height, clip.original_size) == (200, 120, (400, 240))
    result = _run_result(clip, tmp_path / "run")
    paths = render(result, clip, tmp_path / "out")
    info = probe(paths["overlay"])
    assert (info.width, info.height, info.num_frames) == (400, 240, 4) and not has_audio(paths["overlay"])


@pytest.mark.slow
def test_the_app_hands_back_full_resolution_files_with_sound(tmp_path: Path) -> None:
    """Through the app's handlers: a 320x240 upload with sound, processed at 160x120 (seeded untrained network):
    the overlay, the transparent cut-out and the masks come back at 320x240, the videos with the sound."""
    from test_app import H, W, app_env, hop_threads, imported_app, make_frames, request, square_click

    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, FPS) as writer:
        for frame in make_frames(w=2 * W, h=2 * H):
            writer.write(frame)
    upload = tmp_path / "phone.mp4"
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(silent), "-f", "lavfi", "-i", "sine=frequency=440"]
    subprocess.run([*cmd, "-t", "1", "-c:v", "copy", "-c:a", "aac", str(upload)], check=True, capture_output=True)
    with imported_app(app_env(tmp_path)) as app:
        req = request("full-resolution")
        assert "exported at 320x240" in app.load_video(str(upload), req)[0]
        app.click(*square_click(), "object", req)
        *_, last = hop_threads(app.run(TRANSPARENT, None, req))
        _, status, overlay, cut, masks, alpha, *_ = last
        assert status.startswith("done")
        run = app.project_of(req).result
        assert all("probs" in np.load(run.path(i)) for i in run.frames())  # the engine kept the probabilities
        for video in (overlay, cut):
            info = probe(video)
            assert (info.width, info.height) == (2 * W, 2 * H) and has_audio(video)
        with zipfile.ZipFile(masks) as zf:
            first = Image.open(io.BytesIO(zf.read("masks/00000.png")))
            assert first.size == (2 * W, 2 * H) and first.mode == "P"
        with zipfile.ZipFile(alpha) as zf:
            assert Image.open(io.BytesIO(zf.read("cutout/00000.png"))).size == (2 * W, 2 * H)


def _grid(panel: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the coloured cells of a gate image: viridis is saturated, the text and the
    no-gates grey are not."""
    ys, xs = np.nonzero(panel.max(2).astype(int) - panel.min(2) > 40)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _viridis(value: float) -> np.ndarray:
    grey = np.full((1, 1), round(value * 255), np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS)[0, 0, ::-1].astype(int)


def _channel_pattern(tmp_path: Path, channels: int = 8, frames: int = 10) -> RunResult:
    """Transduction: channel c at c / (D - 1) on every frame; induction: 0.5 but channel 5, shut (0) before
    frame 6 and open (1) from it; frame 3 has a given mask (no gates)."""
    result = RunResult("llb", tmp_path, trained=True)
    for frame in range(frames):
        if frame != 3:
            gates = np.full((2, channels, 6, 9), 0.5, np.float16)
            gates[0] = np.linspace(0, 1, channels)[:, None, None]
            gates[1, 5] = float(frame >= 6)
            result.gates[frame] = {1: gates}
    return result


def test_gate_channels_draw_a_row_per_channel_and_a_column_per_frame(tmp_path: Path) -> None:
    channels, frames = 8, 10
    image = gate_channels(_channel_pattern(tmp_path, channels, frames), {1: "dog"})
    width = (image.shape[1] - 6) // 2
    transduction, induction = image[:, :width], image[:, width + 6 :]
    x0, y0, x1, y1 = _grid(transduction)
    rows = [transduction[y0 + round((c + 0.5) * (y1 - y0) / channels), x0 + 2].astype(int) for c in range(channels)]
    assert all(np.abs(row - _viridis(c / (channels - 1))).max() <= 3 for c, row in enumerate(rows))
    runs = 1 + np.count_nonzero(np.abs(np.diff(transduction[y0:y1, x0 + 2].astype(int), axis=0)).max(1) > 0)
    assert runs == channels  # D rows of one colour each, channel 0 at the top
    assert _grid(induction) == (x0, y0, x1, y1)
    for frame in range(frames):
        x = x0 + round((frame + 0.5) * (x1 - x0) / frames)
        for channel in range(channels):
            cell = induction[y0 + round((channel + 0.5) * (y1 - y0) / channels), x].astype(int)
            want = 0.5 if channel != 5 else float(frame >= 6)
            if frame == 3:
                assert (cell == 200).all(), channel  # no gates on the frame with a given mask
            else:
                assert np.abs(cell - _viridis(want)).max() <= 3, (frame, channel)


def test_gate_channels_keep_a_column_for_every_frame_of_a_long_clip(tmp_path: Path) -> None:
    result = _channel_pattern(tmp_path, 8, 2)
    result.gates = {f: result.gates[0] for f in range(400)}
    x0, _, x1, _ = _grid(gate_channels(result, {}))
    assert x1 - x0 >= 400


def test_gate_heatmaps_show_the_channel_that_varies_most_or_the_mean_or_one_channel(tmp_path: Path) -> None:
    """Channel 6 of 8 splits the search region into a closed left and an open right half; the others are flat
    0.5. The default shows it at full contrast; the mean over channels dilutes it eight times."""
    result = RunResult("llb", tmp_path, trained=True)
    gates = np.full((2, 8, 6, 8), 0.5, np.float16)
    gates[:, 6, :, 4:], gates[:, 6, :, :4] = 1.0, 0.0
    result.gates = {0: {1: gates}}
    assert gate_choices(result) == [MOST_VARIED, CHANNEL_MEAN, *(f"channel {c}" for c in range(8))]
    assert gate_means(result) == [(0, "transduction", 0.5), (0, "induction", 0.5)]

    def sides(shown: str) -> tuple[np.ndarray, np.ndarray]:
        heat = gate_heatmaps(result, 0, {1: "dog"}, shown, width=160)
        return heat[100, 10].astype(int), heat[100, 150].astype(int)  # transduction tile: left, right

    left, right = sides(MOST_VARIED)
    assert np.abs(left - _viridis(0)).max() <= 3 and np.abs(right - _viridis(1)).max() <= 3
    assert [a.tolist() for a in sides(MOST_VARIED)] == [a.tolist() for a in sides("channel 6")]
    left, right = sides(CHANNEL_MEAN)
    assert np.abs(left - _viridis(0.5 - 0.5 / 8)).max() <= 3 and np.abs(right - _viridis(0.5 + 0.5 / 8)).max() <= 3
    left, right = sides("channel 2")
    assert np.abs(left - _viridis(0.5)).max() <= 3 and np.abs(right - _viridis(0.5)).max() <= 3
    long = {1: "a name far too long for one tile " * 9}  # cut short to fit its tile
    assert gate_heatmaps(result, 0, long, width=160).shape == gate_heatmaps(result, 0, {}, width=160).shape
    assert gate_channels(result, long).shape == gate_channels(result, {}).shape
    with pytest.raises(ValueError, match=r"channel 0\.\.7"):
        gate_heatmaps(result, 0, {}, "channel 8")
