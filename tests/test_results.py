"""What the app hands back and offers: the shipped example clips (on a fresh clone too) and the exports of a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llb.video.io import probe

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
