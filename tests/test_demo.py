"""The web demo: its request handler directly, and the real page driven in headless Chromium."""

import base64
import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import structured_image
from PIL import Image

from glaclip import GlaclipError
from glaclip.demo import run_segmentation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _needed(module):
    """In CI the demo's dependencies are installed by .ci/run, so a missing one is a failure there."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def test_request_handler_outputs(segmenter, tmp_path):
    rgb = structured_image(90, 140)
    r = run_segmentation(segmenter, rgb, "sky, road; street, car", "gla-proxyclip", 0.0, 0.4, tmp_path)
    assert r["overlay"].shape == (90, 140, 3) and r["labels"].shape == (90, 140, 3)
    assert [row[0] for row in r["table"]] and abs(sum(row[1] for row in r["table"]) - 100) < 0.1
    assert len(r["heatmaps"]) == 3 and r["heatmaps"][1][1] == "road"
    assert sorted(Path(f).name for f in r["files"]) == ["labels.png", "overlay.png", "probs.npz", "result.json"]
    assert np.load(tmp_path / "probs.npz")["probs"].shape == (3, 90, 140)
    with pytest.raises(GlaclipError):
        run_segmentation(segmenter, rgb, " , ", "gla-proxyclip", 0.0, 0.4, tmp_path)
    with pytest.raises(GlaclipError):
        run_segmentation(segmenter, None, "sky", "gla-proxyclip", 0.0, 0.4, tmp_path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server(tiny_files, tmp_path):
    _needed("gradio")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glaclip", "demo", "--random-weights", "--clip", tiny_files["clip"], "--vfm",
         tiny_files["vfm"], "--device", "cpu", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.kill()
    if proc.poll() is not None:
        pytest.fail("demo server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_browser_segments_an_uploaded_image(demo_server, tmp_path):
    sync_api = _needed("playwright.sync_api")
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed")
        pytest.skip("chromium not installed")
    image = tmp_path / "street.png"
    Image.fromarray(structured_image(150, 220, seed=4)).save(image)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(demo_server)
        page.locator("#glaclip-image input[type=file]").set_input_files(str(image))
        page.locator("#glaclip-classes textarea").fill("sky, road; street, car; vehicle, tree")
        page.locator("#glaclip-image img").first.wait_for(timeout=60_000)  # the upload is shown
        page.locator("#glaclip-run").click()
        overlay = page.locator("#glaclip-overlay img").first
        overlay.wait_for(timeout=180_000)
        src = overlay.get_attribute("src")
        if src.startswith("data:"):
            data = base64.b64decode(src.split(",", 1)[1])
        else:
            data = page.request.get(src if src.startswith("http") else demo_server.rstrip("/") + src).body()
        assert Image.open(io.BytesIO(data)).size == (220, 150)  # the overlay has the upload's size
        sync_api.expect(page.locator("#glaclip-shares")).to_contain_text("road", timeout=30_000)
        page.locator("#glaclip-files a").first.wait_for(timeout=30_000)
        links = [a.get_attribute("href") for a in page.locator("#glaclip-files a").all()]
        overlay_link = next(h for h in links if h and "overlay.png" in h)
        url = overlay_link if overlay_link.startswith("http") else demo_server.rstrip("/") + overlay_link
        download = Image.open(io.BytesIO(page.request.get(url).body()))
        assert download.width == 220 and download.height > 150  # the downloadable overlay carries the legend
        assert any(h and "probs.npz" in h for h in links)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("GLACLIP_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["GLACLIP_DEMO_SCREENSHOT"])


def test_request_errors_and_progress_steps(segmenter, tmp_path):
    steps = []
    r = run_segmentation(segmenter, structured_image(40, 60), "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path,
                         progress=lambda f, desc: steps.append((f, desc)))
    assert [d.split()[0] for _, d in steps] == ["encoding", "running", "drawing"] and r["table"]
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)
    with pytest.raises(GlaclipError, match="duplicate"):
        run_segmentation(segmenter, structured_image(40, 60), "sky, sky", "gla-proxyclip", 0.0, 0.5, tmp_path)
