"""A bounded load test of the served app, over loopback only: `python app.py` in its own process, and N
gradio_client sessions that load a clip, click and run at the same moment, round after round. Each session's
click view and masks must equal those of the same steps made alone; the server must keep answering; the
server's RSS and its temp disk are reported, the disk again once the clients have closed (the page's unload
ends their sessions) and after SIGTERM. Every call has a deadline, so the test ends by itself.

CI runs a small form (tests/test_reliability.py). A larger one, with a seeded untrained network:

    python tests/load_app.py --sessions 4 --cycles 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CALL_TIMEOUT_S = 300  # the longest any one call may take before the test gives up on the server
START_TIMEOUT_S = 300


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


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def sessions_on_disk(folder: Path) -> int:
    return len(list(folder.glob("app-*/session-*")))


def _path(value: Any) -> str:
    return value["path"] if isinstance(value, dict) else value


def cycle(url: str, clip: Path, click: tuple[int, int]) -> Outcome:
    """One session: load `clip`, click the object at `click`, run, close; what it saw."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, httpx_kwargs={"timeout": CALL_TIMEOUT_S})  # a busy CPU answers slowly
    try:
        client.submit(handle_file(str(clip)), api_name="/load_video").result(timeout=CALL_TIMEOUT_S)
        working = client.submit(*click, "object", api_name="/click").result(timeout=CALL_TIMEOUT_S)
        view = np.array(Image.open(_path(working[0])).convert("RGB"))
        result = client.submit("none", None, api_name="/run").result(timeout=CALL_TIMEOUT_S)
        with zipfile.ZipFile(_path(result[4])) as zf:
            masks = {n: np.array(Image.open(zf.open(n))) for n in zf.namelist() if n.endswith(".png")}
        return Outcome(view, masks)
    finally:
        client.close()  # the server's unload ends the session once the heartbeat stops


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free loopback port with `env`; the process and its URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the app did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)


def wait_until(done: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def load_test(
    env: dict[str, str], clips: list[Path], clicks: list[tuple[int, int]], cycles: int, log: Path
) -> dict[str, float]:
    """Serve the app with `env` (which names LLB_APP_TMP) and run `cycles` rounds of len(clips) sessions at
    once, after each session alone; the figures."""
    root = Path(env["LLB_APP_TMP"])
    proc, url = serve(env, log)
    try:
        solo = [cycle(url, clip, click) for clip, click in zip(clips, clicks, strict=True)]
        rss0, same, total, peak_disk, rss = rss_mb(proc.pid), 0, 0, 0.0, []
        tick = time.perf_counter()
        with ThreadPoolExecutor(len(clips)) as pool:
            for _ in range(cycles):
                outcomes = list(pool.map(cycle, [url] * len(clips), clips, clicks))
                peak_disk = max(peak_disk, disk_mb(root))
                same += sum(o.same(r) for o, r in zip(outcomes, solo, strict=True))
                total += len(outcomes)
                rss.append(rss_mb(proc.pid) - rss0)
        seconds = time.perf_counter() - tick
        served_after = cycle(url, clips[0], clicks[0]).same(solo[0])  # still answers, and answers the same
        ended = wait_until(lambda: sessions_on_disk(root) == 0, 60)
        figures = {
            "sessions": len(clips),
            "cycles": cycles,
            "identical_to_solo": same,
            "sessions_run": total,
            "served_after": float(served_after),
            "seconds": round(seconds, 1),
            "rss_start_mb": round(rss0, 1),
            "rss_growth_first_cycle_mb": round(rss[0], 1),
            "rss_growth_mb": round(rss[-1], 1),
            "disk_peak_mb": round(peak_disk, 2),
            "sessions_left": 0 if ended else sessions_on_disk(root),
            "disk_after_sessions_mb": round(disk_mb(root), 2),
        }
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        figures["disk_after_sigterm_mb"] = round(disk_mb(root), 2)
        return figures
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from test_app import H, W, app_env, make_frames, write_video

    work = Path(tempfile.mkdtemp(prefix="llb-load-"))
    shifts = [17 * i for i in range(args.sessions)]
    clips = [
        write_video(work / f"clip{s}.mp4", [np.roll(f, s, axis=1) for f in make_frames(args.frames)]) for s in shifts
    ]
    clicks = [((W // 4 + W // 8 + s) % W, H // 4 + H // 6) for s in shifts]
    print(json.dumps(load_test(app_env(work), clips, clicks, args.cycles, work / "server.log")))


if __name__ == "__main__":
    main()
