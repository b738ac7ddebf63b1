"""`llb segment` end to end on a real DAVIS sequence, and its messages for bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from llb.checkpoint import load_model, save_checkpoint
from llb.cli import main
from llb.config import get_config
from llb.inference.crop import CropConfig
from llb.inference.session import InferenceConfig, Segmenter
from llb.network import LLBNet
from llb.video.io import ffmpeg_exe, probe
from llb.video.masks import load_mask, save_palette_png

SEQ = "bear"


@pytest.fixture(scope="module")
def clip(data_dir, tmp_path_factory):
    """The first 6 frames of a real DAVIS 2016 training sequence, and its first mask."""
    root = data_dir / "davis2016-train-240p"
    folder = tmp_path_factory.mktemp("clip")
    for src in sorted((root / "JPEGImages" / SEQ).glob("*.jpg"))[:6]:
        (folder / src.name).symlink_to(src)
    return folder, root / "Annotations" / SEQ / "00000.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fixed (seeded, untrained) lite-llb checkpoint: the CLI must run it only with --allow-untrained."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "lite-llb.safetensors"
    save_checkpoint(LLBNet(get_config("lite", "llb")), path, trained=False)
    return path


COMMON = ["--device", "cpu", "--crop-size", "224x128", "--quiet"]


@pytest.mark.slow
def test_segment_writes_masks_and_a_playable_overlay(clip, checkpoint, tmp_path, capsys):
    frames, mask = clip
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(frames),
            "--mask",
            str(mask),
            "--out",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--allow-untrained",
            *COMMON,
        ]
    )
    assert rc == 0
    assert "UNTRAINED" in capsys.readouterr().err
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(6)]
    assert Image.open(pngs[0]).mode == "P"
    assert np.array_equal(load_mask(pngs[0]), load_mask(mask))  # the given first mask comes back unchanged
    info = probe(out / "overlay.mp4")
    assert info.num_frames == 6 and (info.width, info.height) == (428, 240)
    ffmpeg = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(out / "overlay.mp4")], capture_output=True, text=True
    )
    assert "h264" in ffmpeg.stderr and "yuv420p" in ffmpeg.stderr


@pytest.mark.slow
def test_segment_tracks_both_ways_from_the_mask_frame(clip, checkpoint, tmp_path):
    """--mask-frame 3: frames 3-5 as a session tracks forwards from 3, frames 2-0 as it tracks backwards."""
    frames, mask = clip
    given = mask.parent / "00003.png"
    out = tmp_path / "out"
    argv = ["segment", str(frames), "--mask", str(given), "--mask-frame", "3", "--out", str(out)]
    assert main([*argv, "--checkpoint", str(checkpoint), "--allow-untrained", *COMMON]) == 0
    masks = {p.stem: load_mask(p) for p in sorted((out / "masks").glob("*.png"))}
    assert list(masks) == [f"{i:05d}" for i in range(6)] and probe(out / "overlay.mp4").num_frames == 6
    assert np.array_equal(masks["00003"], load_mask(given))

    model = load_model(checkpoint, allow_untrained=True)
    seg = Segmenter(model, InferenceConfig(crop=CropConfig(size=(128, 224))), device="cpu")
    session = seg.start(frames)
    session.add_mask(3, load_mask(given))
    for result in [*session.propagate(start=3), *session.propagate(start=3, reverse=True)]:
        assert np.array_equal(masks[result.name], result.labels)


def test_python_dash_m_entry_point_reports_bad_input_without_traceback(tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "llb", "segment", str(junk), "--mask", "m.png", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2
    assert "not a video" in res.stderr and "Traceback" not in res.stderr


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_masks_and_checkpoints_get_clear_messages(clip, checkpoint, tmp_path, capsys, monkeypatch):
    frames, mask = clip
    monkeypatch.delenv("LLB_CHECKPOINT_DIR", raising=False)
    monkeypatch.setattr("llb.checkpoint.LOCAL_DIRS", ())  # as in a clone without the shipped checkpoints
    base = ["segment", str(frames), "--out", str(tmp_path / "o"), *COMMON]
    small = tmp_path / "small.png"
    save_palette_png(small, np.ones((100, 100), np.uint8))
    assert "mask is 100x100 (aspect 1.00) but the video is 428x240" in _err(capsys, [*base, "--mask", str(small)])
    empty = tmp_path / "empty.png"
    save_palette_png(empty, np.zeros((240, 428), np.uint8))
    assert "draw or click the object" in _err(capsys, [*base, "--mask", str(empty)])
    assert "no trained checkpoint" in _err(capsys, [*base, "--mask", str(mask)])
    assert "marked untrained" in _err(capsys, [*base, "--mask", str(mask), "--checkpoint", str(checkpoint)])
    other = _err(
        capsys, [*base, "--mask", str(mask), "--checkpoint", str(checkpoint), "--variant", "joint", "--allow-untrained"]
    )
    assert "holds a lite-llb network" in other and "--variant llb" in other
    assert not (tmp_path / "o" / "overlay.mp4").exists()
