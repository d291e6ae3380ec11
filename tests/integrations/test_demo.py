"""The web demo: its request handler directly, and the real page driven in headless Chromium."""

import base64
import importlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, structured_image
from PIL import Image, ImageFile

from glaclip import GlaclipError
from glaclip.integrations.demo import load_upload, preview, run_segmentation

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
    assert sorted(Path(f).name for f in r["files"]) == ["image.json", "image_labels.png", "image_overlay.png",
                                                        "image_probs.npz"]
    assert np.load(tmp_path / "image_probs.npz")["probs"].shape == (3, 90, 140)
    with pytest.raises(GlaclipError):
        run_segmentation(segmenter, rgb, " , ", "gla-proxyclip", 0.0, 0.4, tmp_path)
    with pytest.raises(GlaclipError):
        run_segmentation(segmenter, None, "sky", "gla-proxyclip", 0.0, 0.4, tmp_path)


def test_downloads_are_the_cli_outputs(segmenter, tiny_files, tmp_path):
    """The demo writes its downloads through `export`: the same files, JSON layout and bytes as
    `glaclip segment` on the same image, classes and settings (only "image" names the upload)."""
    img = tmp_path / "up" / "street.png"
    img.parent.mkdir()
    Image.fromarray(structured_image(50, 70)).save(img)
    classes, cli_out, demo_out = "sky, road; street, car", tmp_path / "cli", tmp_path / "demo"
    args = ["segment", str(img), "-c", classes, "-m", "gla-proxyclip", "--prob-thd", "0.1", "--alpha", "0.4",
            "--save-probs", "-o", str(cli_out), "-q", "--device", "cpu", "--dtype", "fp32",
            *(x for k, v in tiny_files.items() for x in (f"--{k.replace('_', '-')}", v))]
    cli = run_cli(*args)
    assert cli.returncode == 0, cli.stderr
    r = run_segmentation(segmenter, str(img), classes, "gla-proxyclip", 0.1, 0.4, demo_out)
    names = ["street.json", "street_labels.png", "street_overlay.png", "street_probs.npz"]
    assert sorted(Path(f).name for f in r["files"]) == names and sorted(os.listdir(demo_out)) == names
    demo_json = json.loads((demo_out / "street.json").read_text())
    cli_json = json.loads((cli_out / "street.json").read_text())
    assert demo_json.pop("image") == "street.png" and cli_json.pop("image") == str(img)
    assert demo_json == cli_json
    for name in ("street_labels.png", "street_overlay.png"):
        assert (demo_out / name).read_bytes() == (cli_out / name).read_bytes(), name
    demo_npz, cli_npz = np.load(demo_out / "street_probs.npz"), np.load(cli_out / "street_probs.npz")
    assert all(np.array_equal(demo_npz[k], cli_npz[k]) for k in ("probs", "labels", "classes"))


def _huge_png(path: Path, side: int = 20000) -> Path:
    """A valid side x side 1-bit grey PNG written row by row: a few dozen KB on disk, 1.2 GB as RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z, row = zlib.compressobj(9), bytes(1 + (side + 7) // 8)  # filter byte 0 + packed bits
    parts = [z.compress(row) for _ in range(side)] + [z.flush()]
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def _bad_uploads(folder: Path) -> dict:
    """Upload files -> the start of the message the demo must show for each."""
    (folder / "notes.txt").write_text("not an image\n")
    buf = io.BytesIO()
    Image.fromarray(structured_image(60, 80, seed=6)).save(buf, format="PNG")
    (folder / "cut.png").write_bytes(buf.getvalue()[:400])  # a real header, the pixel data cut short
    return {folder / "notes.txt": "cannot read image notes.txt: not a recognised image format",
            folder / "cut.png": "cannot read image cut.png: ",
            _huge_png(folder / "huge.png"): "image huge.png is 20000x20000 = 400.0 megapixels, over the limit of 50"}


def test_uploads_go_through_the_image_reader(segmenter, tmp_path, monkeypatch):
    """Non-images and images over the pixel limit are refused by the CLI's reader with one line naming
    the upload (not the server's temporary path); the limit is checked before any pixel is decoded."""
    monkeypatch.delenv("GLACLIP_MAX_PIXELS", raising=False)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or real_load(im))
    good = tmp_path / "ok.png"
    Image.fromarray(structured_image(60, 80, seed=5)).save(good)
    assert load_upload(good).shape == (60, 80, 3) and (80, 60) in decoded
    assert preview(np.zeros((3000, 1000, 3), np.uint8)).shape == (1000, 334, 3)
    assert preview(load_upload(good)).shape == (60, 80, 3)
    small = load_upload(_huge_png(tmp_path / "small.png", side=300))  # the writer makes a real PNG
    assert small.shape == (300, 300, 3) and not small.any()
    upload_dir = tmp_path / "gradio-tmp"  # where Gradio keeps an upload: the message names the file only
    upload_dir.mkdir()
    cases = _bad_uploads(upload_dir)
    assert (upload_dir / "huge.png").stat().st_size < 200_000
    for path, message in cases.items():
        for call in (lambda: load_upload(str(path)), lambda: run_segmentation(
                segmenter, str(path), "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path / "out")):
            with pytest.raises(GlaclipError) as info:
                call()
            assert str(info.value).startswith(message) and str(upload_dir) not in str(info.value)
            assert "\n" not in str(info.value)
    assert (20000, 20000) not in decoded  # refused on the header
    assert not (tmp_path / "out").exists()  # nothing written for a refused request
    r = run_segmentation(segmenter, str(good), "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path / "out")
    assert r["labels"].shape == (60, 80, 3)


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
        page.locator("#glaclip-upload img").first.wait_for(timeout=60_000)  # the upload is shown
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


def test_browser_refuses_bad_uploads_with_one_line(demo_server, tmp_path):
    """A non-image, a cut PNG and a 20000x20000 PNG: the page shows the reader's message, the server
    log gets one line per refusal and no traceback; Segment on a refused upload is refused the same way."""
    sync_api = _needed("playwright.sync_api")
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed")
        pytest.skip("chromium not installed")
    cases = _bad_uploads(tmp_path)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(demo_server)
        for path, message in cases.items():
            page.locator("#glaclip-image input[type=file]").set_input_files(str(path))
            sync_api.expect(page.get_by_text(message).first).to_be_visible(timeout=60_000)
            page.locator("#glaclip-image button[aria-label='Clear']").first.click()
        page.locator("#glaclip-image input[type=file]").set_input_files(str(tmp_path / "huge.png"))
        sync_api.expect(page.get_by_text("image huge.png is 20000x20000").first).to_be_visible(timeout=60_000)
        page.locator(".toast-close").first.wait_for(timeout=10_000)
        for close in page.locator(".toast-close").all():
            close.click()
        sync_api.expect(page.get_by_text("image huge.png is 20000x20000")).to_have_count(0, timeout=10_000)
        page.locator("#glaclip-run").click()
        sync_api.expect(page.get_by_text("image huge.png is 20000x20000").first).to_be_visible(timeout=60_000)
        assert page.locator("#glaclip-upload img").count() == 0  # nothing shown for a refused upload
        browser.close()
    log = (tmp_path / "server.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith(("glaclip: demo upload", "glaclip: demo request"))]
    assert [line.split(":")[1] for line in lines] == [" demo upload"] * 4 + [" demo request 1"], log
    for line, message in zip(lines, [*cases.values(), cases[tmp_path / "huge.png"], cases[tmp_path / "huge.png"]]):
        assert message in line and str(tmp_path) not in line
    assert "Traceback" not in log and "Could not preprocess" not in log, log


def test_request_errors_and_progress_steps(segmenter, tmp_path):
    steps = []
    r = run_segmentation(segmenter, structured_image(40, 60), "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path,
                         progress=lambda f, desc: steps.append((f, desc)))
    assert [d.split()[0] for _, d in steps] == ["encoding", "running", "drawing"] and r["table"]
    assert [f for f, _ in steps] == sorted(f for f, _ in steps)
    with pytest.raises(GlaclipError, match="duplicate"):
        run_segmentation(segmenter, structured_image(40, 60), "sky, sky", "gla-proxyclip", 0.0, 0.5, tmp_path)


def test_region_masks_upload_for_corrclip(files6, tmp_path):
    """corrclip in the demo: an uploaded mask file (npz or 16-bit png) is what the encoding uses;
    without one (and no --sam) one message; a mask file of another size names the upload."""
    from glaclip import Segmenter
    from glaclip.integrations.demo import EncodingCache

    seg = Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp32", **files6)
    rgb = structured_image(60, 80, seed=2)
    masks = np.kron(np.arange(12).reshape(3, 4), np.ones((20, 20), int)).astype(np.int32)
    np.savez_compressed(tmp_path / "up.npz", instance_mask=masks)
    Image.fromarray(masks.astype(np.uint16)).save(tmp_path / "up.png")
    cache = EncodingCache()
    a = run_segmentation(seg, rgb, "sky, road", "corrclip", 0.0, 0.5, tmp_path / "a", encodings=cache,
                         masks=tmp_path / "up.npz")
    b = run_segmentation(seg, rgb, "sky, road", "corrclip", 0.0, 0.5, tmp_path / "b", encodings=cache,
                         masks=tmp_path / "up.png")
    assert b["reused"] and np.array_equal(a["labels"], b["labels"])  # same masks: same encoding
    want = seg.predict(rgb, "sky, road", masks=masks)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "image_labels.png")), want.labels)
    with pytest.raises(GlaclipError, match="corrclip needs region masks: upload a mask file"):
        run_segmentation(seg, rgb, "sky, road", "corrclip", 0.0, 0.5, tmp_path / "c")
    np.savez_compressed(tmp_path / "small.npz", instance_mask=masks[:50])
    with pytest.raises(GlaclipError, match="small.npz") as err:
        run_segmentation(seg, rgb, "sky, road", "corrclip", 0.0, 0.5, tmp_path / "d", masks=tmp_path / "small.npz")
    assert str(tmp_path) not in str(err.value)
    # a method that reads no masks ignores an upload
    r = run_segmentation(seg, rgb, "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path / "e", masks=tmp_path / "up.npz")
    assert r["labels"].shape == (60, 80, 3)
