"""Issue 25, a hostile user trial of runs: compare's --out checked first, each method's settings line
lists only its settings, one run at a time per --out, 16-bit images scaled by their bit depth, true
load times and peak memory in the compare table."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import run_cli, structured_image
from PIL import Image, PngImagePlugin

from glaclip import Segmenter
from glaclip.config.protocols import PRESETS, effective
from glaclip.io.images import load_image
from glaclip.runs.compare import compare

CLASSES = "sky, road; street, car"
MODELS = ("clip", "clip_weights", "vfm", "vfm_weights")
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def _models(files):
    return [x for k in MODELS for x in (f"--{k.replace('_', '-')}", files[k])] + ["--device", "cpu", "--dtype", "fp32"]


def _glaclip(files, command, *args, timeout=600):
    """A glaclip command in a process of its own (the runs against a lock this process holds, --processes 2)."""
    return subprocess.run([sys.executable, "-m", "glaclip", command, *args, *_models(files)], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def _one_error_line(r, *words):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("glaclip: error: "), r.stderr
    assert all(w in lines[0] for w in words), r.stderr
    return lines[0]


# ---------------------------------------------------------------- 1. compare's --out, checked first


def test_compare_refuses_an_unwritable_out_before_any_model_loads(tiny_files, tmp_path):
    image = tmp_path / "im.png"
    Image.fromarray(structured_image(40, 48)).save(image)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder.png").mkdir()
    cases = [(tmp_path / "a-folder.png", "a-folder.png"), (tmp_path / "a-file" / "c.png", "a-file")]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        cases.append((locked / "c.png", "locked"))
    for out, words in cases:
        r = run_cli("compare", image, "-m", "gla-proxyclip", "-c", CLASSES, "-o", out, *_models(tiny_files))
        _one_error_line(r, words)  # no method ran (each would print its time), no internal error
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["im.png", "a-file", "a-folder.png"] + (
        ["locked"] if len(cases) == 3 else []))
    assert not any((tmp_path / "a-folder.png").iterdir())


# ---------------------------------------------------------------- 2. each method's settings line


TRIDENT_ONLY = ("cos_fac", "refine_neg_cos", "sam_halves", "sam_refine", "coarse_thresh", "sam_iou_thresh",
                "minimal_area", "sam_mask_coff")
GLA_ONLY = ("rho", "proxy_iters", "dynamic", "dynamic_beta", "alpha_beta", "alpha_gamma")


def _keys(line):
    return set(re.findall(r"(\w+)=", line))


def test_each_method_prints_only_the_settings_it_uses():
    lines = {name: _keys(p.describe()) for name, p in PRESETS.items()}
    for name, keys in lines.items():
        assert {"preset", "method", "short_side", "crop", "stride", "logit_scale", "prob_thd"} <= keys, name
    gla = lines["gla-proxyclip"]
    assert not gla & {*TRIDENT_ONLY, "gaussian_std", "token_norm"} and set(GLA_ONLY) <= gla
    assert set(TRIDENT_ONLY) <= lines["trident"] and not lines["trident"] & {*GLA_ONLY, "gaussian_std"}
    assert "token_norm" in lines["proxyclip"] and not lines["proxyclip"] & {*GLA_ONLY, *TRIDENT_ONLY}
    assert "gaussian_std" in lines["naclip"] and not lines["naclip"] & {*GLA_ONLY, *TRIDENT_ONLY, "token_norm"}
    for name in ("clip", "clearclip", "sclip", "maskclip", "corrclip"):
        assert not lines[name] & {*GLA_ONLY, *TRIDENT_ONLY, "gaussian_std", "token_norm", "beta", "gamma"}, name
    p = PRESETS["gla-proxyclip"].with_overrides(rho=0.6, short_side=560)
    assert "rho=0.6" in p.describe() and "short_side=560" in p.describe()


# ---------------------------------------------------------------- 3. one run at a time per --out


def _hold(out):
    """The lock a live glaclip run holds on out, taken by this process (pid written as a run does)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".glaclip-lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def test_a_second_segment_run_into_one_out_is_refused(tiny_files, tmp_path):
    image = tmp_path / "im.png"
    Image.fromarray(structured_image(40, 48)).save(image)
    out = tmp_path / "out"
    fd = _hold(out)
    try:
        for extra in ([], ["--processes", "2"]):
            r = _glaclip(tiny_files, "segment", str(image), "-c", CLASSES, "-o", str(out), "-q", *extra)
            line = _one_error_line(r)
            assert line.startswith(f"glaclip: error: {out} is in use by another glaclip run (pid {os.getpid()}); ")
        assert sorted(p.name for p in out.iterdir()) == [".glaclip-lock"]
    finally:
        os.close(fd)
    r = run_cli("segment", image, "-c", CLASSES, "-o", out, "-q", "--set", "short_side=112", *_models(tiny_files))
    assert r.returncode == 0, r.stderr
    assert (out / "im_labels.png").is_file() and not (out / ".glaclip-lock").exists()  # released and removed


HOLDER = """
import sys, time
from pathlib import Path
from glaclip.runs.runlock import hold
with hold(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_dies_with_a_killed_run(tmp_path):
    from glaclip.errors import GlaclipError
    from glaclip.runs.runlock import hold

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GlaclipError, match=rf"in use by another glaclip run \(pid {holder.pid}\)"):
            with hold(out):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    assert (out / ".glaclip-lock").exists()  # a killed run cannot remove it, but the kernel released the lock
    with hold(out):
        assert (out / ".glaclip-lock").read_text().strip() == str(os.getpid())
    assert not (out / ".glaclip-lock").exists()


# ---------------------------------------------------------------- 4. 16-bit images by their bit depth


def _scaled(values):
    return np.repeat(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)[..., None], 3, -1)


def test_16_bit_images_with_small_values_are_scaled_by_their_bit_depth(tmp_path, monkeypatch):
    gray = (np.arange(48 * 40).reshape(40, 48) % 256).astype(np.uint16)  # every value <= 255
    want = _scaled(gray)
    assert want.max() == 1  # what 16-bit values <= 255 are: nearly black
    cv2.imwrite(str(tmp_path / "cv.png"), gray)
    Image.fromarray(gray).save(tmp_path / "pil.png")
    for name in ("cv.png", "pil.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode.startswith("I;16") and im.getextrema()[1] == 255
        np.testing.assert_array_equal(load_image(tmp_path / name), want, err_msg=name)
    np.testing.assert_array_equal(load_image(gray), want)
    np.testing.assert_array_equal(load_image(gray.astype(">u2")), want)
    np.testing.assert_array_equal(load_image(Image.fromarray(gray)), want)
    # Pillow before 10.? opened 16-bit grayscale PNG as mode "I": the file's bit depth decides
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    with Image.open(tmp_path / "cv.png") as im:
        assert im.mode == "I"
        im.load()  # decoded: the PNG header still tells
        np.testing.assert_array_equal(load_image(im), want)
    np.testing.assert_array_equal(load_image(tmp_path / "cv.png"), want)
    # 8-bit data is unchanged, and so are generic 32/64-bit integer arrays (their values decide)
    np.testing.assert_array_equal(load_image(gray.astype(np.uint8)), np.repeat(gray.astype(np.uint8)[..., None], 3, -1))
    np.testing.assert_array_equal(load_image(gray.astype(np.int32)), np.repeat(gray.astype(np.uint8)[..., None], 3, -1))
    np.testing.assert_array_equal(load_image(gray.astype(np.int64) * 257), np.repeat(gray.astype(np.uint8)[..., None],
                                                                                     3, -1))


# ---------------------------------------------------------------- 5. compare's load time and peak memory


def test_compare_peak_memory_includes_the_methods_models(tiny_files):
    rgb = structured_image(40, 48)
    entries = [(m, *effective(m, None, None, {"short_side": 112}, CLASSES)) for m in ("clearclip", "gla-proxyclip")]
    weights = 96  # MiB of (stand-in) weights each method loads

    def load(preset):
        seg = Segmenter.from_pretrained(preset=preset, device="cpu", dtype="fp32", **tiny_files)
        seg.ballast = torch.ones(weights * 2**20 // 4)  # touched pages, as loaded weights
        return seg

    runs = compare(rgb, entries, load)
    assert [r.method for r in runs] == ["clearclip", "gla-proxyclip"]
    for r in runs:
        assert r.peak_mb >= weights * 0.95, (r.method, r.peak_mb)
        assert r.load_seconds > 0 and r.seconds > 0


class _SlowSam2:
    identity = {"model": "fake", "weights": "random"}

    def __init__(self, name):
        self.name = name

    def generate(self, rgb):
        return (np.arange(rgb.shape[0])[:, None] // 10 * 10 + np.arange(rgb.shape[1])[None, :] // 12).astype(np.int32)


def test_compare_times_the_sam2_load_in_the_masks_row(files6, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import glaclip.models.sam2
    from glaclip.cli.main import app

    pause = 1.5

    def slow_load(name, weights=None, device="auto", dtype="auto"):
        time.sleep(pause)
        return _SlowSam2(name)

    monkeypatch.setattr(glaclip.models.sam2, "load_sam2", slow_load)
    image, out = tmp_path / "im.png", tmp_path / "cmp.png"
    Image.fromarray(structured_image(40, 48)).save(image)
    args = ["compare", str(image), "-m", "gla-proxyclip,corrclip", "-c", CLASSES, "--sam", "sam2-hiera-tiny",
            "--sam-weights", "random", "--set", "short_side=112", "-o", str(out), "-q"] + _models(files6)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    runs = {x["method"]: x for x in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert list(runs) == ["gla-proxyclip", "masks: sam2-hiera-tiny", "corrclip"]
    assert runs["masks: sam2-hiera-tiny"]["load_seconds"] >= pause  # SAM 2's load, in the row of the masks
