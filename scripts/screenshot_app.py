"""Retake assets/app.png: the app with the shipped checkpoints in headless Debian chromium (Playwright), on the
shipped dog example: a click on the dog, one on the person as background, Run, then the LLB/JOINT comparison and
its gate maps. Needs chromium, Playwright and the trained checkpoints; takes a few minutes on a 2-core CPU.

    python scripts/screenshot_app.py [OUT.png] [--frames 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "Dog and ball (3 s)"
DOG, PERSON = (0.47, 0.60), (0.27, 0.45)  # click points as fractions of the frame
TIMEOUT_MS = 1_200_000


def shrink(png: Path) -> None:
    """Re-save as a 256-colour PNG (a third of the size; the page's flat colours survive), to keep the repo light."""
    image = Image.open(png).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(png, optimize=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, frames: int, log: Path) -> subprocess.Popen:
    """`python app.py` on `port` with at most `frames` frames; returns once it answers."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "LLB_MAX_FRAMES": str(frames), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"the app did not start; see {log}")


def click(page, point: tuple[float, float]) -> None:
    box = page.locator("#view img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * point[0], box["y"] + box["height"] * point[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "assets" / "app.png"))
    parser.add_argument("--frames", type=int, default=40, help="frames of the example to process")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = start_app(port, args.frames, log)
    status = "document.querySelector('#status textarea').value"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#run")
            page.locator("#example input").click()
            page.get_by_role("option", name=EXAMPLE).click()
            page.wait_for_function(f"{status}.startsWith('loaded')")
            click(page, DOG)
            page.wait_for_function(f"{status}.includes('1 object')")
            page.locator("#mode").get_by_label("background", exact=True).check()
            click(page, PERSON)
            page.wait_for_timeout(3000)
            page.click("#run")
            page.wait_for_function(f"{status}.startsWith('done')")
            page.click("#compare")
            page.wait_for_function(
                "(() => { const vs = [...document.querySelectorAll('#cmp-llb video, #cmp-joint video')];"
                " return vs.length === 2 && vs.every((v) => v.readyState >= 2 && v.videoWidth > 0); })()"
            )
            page.wait_for_timeout(2000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    shrink(Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
