"""The app as a person uses it: Debian chromium driven by Playwright uploads a clip larger than the processing
size, clicks the object, paints, runs, waits for the overlay video to play, downloads the masks zip and the
overlay at the upload's resolution, corrects a later frame by clicks and re-propagates, compares LLB with the
JOINT-style baseline, and picks one gate channel for the heat maps.

Skips without chromium or Playwright (a developer's box); CI installs both (.ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_app import H, N, W, app_env, free_port, make_frames, write_video

from llb.video.io import probe

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on a free port, with the test environment; yields its URL."""
    root = tmp_path_factory.mktemp("browser")
    port = free_port()
    env = {**os.environ, **app_env(root), "GRADIO_SERVER_PORT": str(port)}
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"the app did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_upload_click_paint_run_and_compare(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    # twice the processing size (app_env's LLB_MAX_SIDE = W): processed at WxH, exported at the upload's size
    clip = write_video(tmp_path / "square.mp4", make_frames(w=2 * W, h=2 * H))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        page.wait_for_selector("#run")
        page.set_input_files("#upload input[type=file]", str(clip))
        status = "document.querySelector('#status textarea').value"
        page.wait_for_function(f"{status}.startsWith('loaded')")

        box = page.locator("#view img").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.36, box["y"] + box["height"] * 0.42)
        page.wait_for_function(f"{status}.includes('1 object')")
        assert "object 1" in page.inner_text("#legend")

        canvas = page.locator("#editor canvas").first.bounding_box()
        x0, y = canvas["x"] + canvas["width"] * 0.1, canvas["y"] + canvas["height"] * 0.85
        page.mouse.move(x0, y)
        page.mouse.down()
        for step in range(1, 6):
            page.mouse.move(x0 + step * canvas["width"] * 0.03, y)
        page.mouse.up()

        # Run is disabled while it runs (so a double click runs once): watch its attribute from before the click,
        # since on a fast machine 12 small frames may be done before a check after the click could look
        page.evaluate(
            "(() => { window.runDisabled = false; const b = document.querySelector('#run');"
            " new MutationObserver(() => { if (b.disabled) window.runDisabled = true; })"
            ".observe(b, {attributes: true}); })()"
        )
        page.click("#run")
        page.wait_for_function(
            "(() => { const v = document.querySelector('#vout video');"
            " return v && v.readyState >= 2 && v.videoWidth > 0; })()"
        )
        assert page.input_value("#status textarea").startswith("done: 12 frames")
        assert page.evaluate("window.runDisabled")
        page.evaluate("document.querySelector('#vout video').play()")
        page.wait_for_function("document.querySelector('#vout video').currentTime > 0")

        # the downloads have the upload's resolution, not the processed one
        with page.expect_download() as download:
            page.locator("#masks-zip a[download]").first.click()
        with zipfile.ZipFile(download.value.path()) as zf:
            sizes = {Image.open(zf.open(n)).size for n in zf.namelist() if n.endswith(".png")}
            assert len([n for n in zf.namelist() if n.endswith(".png")]) == N
        assert sizes == {(2 * W, 2 * H)}
        overlay = tmp_path / "overlay.mp4"
        overlay.write_bytes(page.request.get(page.evaluate("document.querySelector('#vout video').src")).body())
        info = probe(overlay)
        assert (info.width, info.height, info.num_frames) == (2 * W, 2 * H, N)

        # correct a later frame by clicks (they refine its propagated mask), then re-propagate from it
        page.get_by_role("tab", name="7. Correct").click()
        page.wait_for_function("!document.querySelector('#repropagate')?.disabled")
        frame = page.locator("#correct-frame input[type=number]")
        frame.fill("8")
        frame.press("Tab")
        page.wait_for_function(f"{status}.startsWith('frame 8 (correction)')")
        view = "document.querySelector('#view img').src"
        for fx, fy, mode in ((0.475, 0.42, "object"), (0.9, 0.9, "background")):
            page.locator("#mode label", has_text=mode).click()
            before = page.evaluate(view)
            box = page.locator("#view img").bounding_box()  # the page is scrolled down to the tab: click scrolls
            page.locator("#view img").click(position={"x": box["width"] * fx, "y": box["height"] * fy})
            page.wait_for_function(f"{view} !== {json.dumps(before)}")
        assert page.locator(".toast-body.error").count() == 0  # the upload's downscaling warning may still show
        page.screenshot(path=str(tmp_path / "corrected.png"), full_page=True)
        page.click("#repropagate")
        page.wait_for_function(f"{status}.startsWith('done')")
        page.wait_for_function("!document.querySelector('#run').disabled")

        page.get_by_role("tab", name="6. Compare LLB and JOINT").click()
        page.click("#compare")
        page.wait_for_function(
            "(() => { const vs = [...document.querySelectorAll('#cmp-llb video, #cmp-joint video')];"
            " return vs.length === 2 && vs.every((v) => v.readyState >= 2 && v.videoWidth > 0); })()"
        )
        page.evaluate("document.querySelector('#cmp-llb video').play()")
        page.wait_for_function("!document.querySelector('#cmp-joint video').paused")  # synchronised
        # the gate channels over time, and the heat maps of a channel chosen in the dropdown
        page.wait_for_function("document.querySelector('#gate-channels img')?.naturalWidth > 0")
        heat = "document.querySelector('#gate-maps img')?.src"
        before = page.wait_for_function(f"{heat}").json_value()
        page.locator("#gate-shown input").click()
        page.get_by_role("option", name="channel 3", exact=True).click()
        page.wait_for_function(f"{heat} && {heat} !== {json.dumps(before)}")
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
