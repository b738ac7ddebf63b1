"""The package's public API, and the example script that uses it (run as a user would)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import REPO, require_shared

import llb
from llb.evaluation.davis import read_indexed


def test_package_root_exports_the_inference_api() -> None:
    assert llb.Segmenter.from_pretrained and llb.Session.propagate
    assert set(llb.__all__) <= set(dir(llb))


def test_example_script_tracks_a_davis_sequence(tmp_path) -> None:
    seq = require_shared("data", "davis2017-dev")
    frames, annotations = seq / "JPEGImages" / "blackswan", seq / "Annotations" / "blackswan"
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "track_objects.py"),
            str(frames),
            str(annotations / "00000.png"),
            str(out),
            "--frames",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("frame ") == 4
    assert (out / "overlay.mp4").stat().st_size > 0
    for t in range(4):
        pred, truth = read_indexed(out / "masks" / f"{t:05d}.png") > 0, read_indexed(annotations / f"{t:05d}.png") > 0
        assert np.logical_and(pred, truth).sum() / np.logical_or(pred, truth).sum() > 0.8
