"""A bounded load test of the served app, over loopback only: N gradio_client sessions load a clip, click and
run at the same moment, round after round. Each session's click view and masks must equal those of the same
steps made alone; the server must keep answering; RSS and temp-disk growth are reported. Every call has a
deadline, so the test ends by itself.

CI runs a small form (tests/test_reliability.py). A larger one, on the shipped checkpoints or, with
LLB_ALLOW_UNTRAINED=1, on an untrained network:

    python tests/load_app.py --sessions 4 --cycles 30
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

CALL_TIMEOUT_S = 300  # the longest any one call may take before the test gives up on the server


@dataclass
class Outcome:
    """What one session saw: the working view after its click and the masks of its run, by frame."""

    view: np.ndarray
    masks: dict[str, np.ndarray]

    def same(self, other: Outcome) -> bool:
        return (
            np.array_equal(self.view, other.view)
            and self.masks.keys() == other.masks.keys()
            and all(np.array_equal(m, other.masks[k]) for k, m in self.masks.items())
        )


def rss_mb() -> float:
    """This process's resident memory (the server runs in it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def _path(value: Any) -> str:
    return value["path"] if isinstance(value, dict) else value


def cycle(url: str, clip: Path, click: tuple[int, int]) -> tuple[Outcome, str]:
    """One session: load `clip`, click the object at `click`, run; its outcome and its session hash."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.submit(handle_file(str(clip)), api_name="/load_video").result(timeout=CALL_TIMEOUT_S)
    working = client.submit(*click, "object", api_name="/click").result(timeout=CALL_TIMEOUT_S)
    view = np.array(Image.open(_path(working[0])).convert("RGB"))
    result = client.submit("none", None, api_name="/run").result(timeout=CALL_TIMEOUT_S)
    with zipfile.ZipFile(_path(result[4])) as zf:
        masks = {n: np.array(Image.open(zf.open(n))) for n in zf.namelist() if n.endswith(".png")}
    return Outcome(view, masks), client.session_hash


def load_test(app: ModuleType, clips: list[Path], clicks: list[tuple[int, int]], cycles: int) -> dict[str, float]:
    """Serve `app` on loopback and run `cycles` rounds of len(clips) sessions at once; the figures."""
    demo = app.build()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    root = app.SESSIONS.root
    try:
        solo = []
        for clip, click in zip(clips, clicks, strict=True):  # alone, one after another: the reference
            outcome, session = cycle(url, clip, click)
            app.SESSIONS.close(session)
            solo.append(outcome)
        app.release_memory()
        rss0, disk0, same, total, peak_disk = rss_mb(), disk_mb(root), 0, 0, 0.0
        tick = time.perf_counter()
        with ThreadPoolExecutor(len(clips)) as pool:
            for _ in range(cycles):
                runs = list(pool.map(cycle, [url] * len(clips), clips, clicks))
                peak_disk = max(peak_disk, disk_mb(root))
                for (outcome, session), reference in zip(runs, solo, strict=True):
                    same += outcome.same(reference)
                    total += 1
                    app.SESSIONS.close(session)  # as the page's unload does when a tab closes
        seconds = time.perf_counter() - tick
        still, session = cycle(url, clips[0], clicks[0])  # the server still answers, and answers the same
        app.SESSIONS.close(session)
        app.release_memory()
        return {
            "sessions": len(clips),
            "cycles": cycles,
            "identical_to_solo": same,
            "sessions_run": total,
            "served_after": float(still.same(solo[0])),
            "seconds": round(seconds, 1),
            "rss_growth_mb": round(rss_mb() - rss0, 1),
            "disk_before_mb": round(disk0, 2),
            "disk_peak_mb": round(peak_disk, 2),
            "disk_after_mb": round(disk_mb(root), 2),
        }
    finally:
        demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_app import H, W, make_frames, write_video

    work = Path(tempfile.mkdtemp(prefix="llb-load-"))
    os.environ.setdefault("LLB_APP_TMP", str(work / "app"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    shifts = [17 * i for i in range(args.sessions)]
    clips = [
        write_video(work / f"clip{s}.mp4", [np.roll(f, s, axis=1) for f in make_frames(args.frames)]) for s in shifts
    ]
    clicks = [((W // 4 + W // 8 + s) % W, H // 4 + H // 6) for s in shifts]
    print(json.dumps(load_test(app, clips, clicks, args.cycles)))


if __name__ == "__main__":
    main()
