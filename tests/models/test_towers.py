"""Every frozen network a method runs is loaded through one call and is part of a run's identity by
content: Trident's SAM and SAM 2 (when it generates the region masks) as much as CLIP and the VFM."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import structured_image
from PIL import Image
from typer.testing import CliRunner

from glaclip.cli import app
from glaclip.config.backbones import DEFAULT_CLIP, DEFAULT_SAM, DEFAULT_VFM
from glaclip.config.registry import METHODS, Method
from glaclip.errors import GlaclipError
from glaclip.runs.collection import Shard, check_random_weights


def test_each_method_declares_its_towers_and_their_defaults():
    for entry in METHODS.values():
        assert entry.towers[0] == "clip"
        assert ("vfm" in entry.towers) == entry.needs_vfm and ("sam" in entry.towers) == entry.needs_sam
    assert METHODS["trident"].towers == ("clip", "vfm", "sam")
    assert METHODS["trident"].model("vfm") == "vit_base_patch16_224.dino" != DEFAULT_VFM  # its release's
    assert METHODS["trident"].model("sam") == DEFAULT_SAM == "sam-vit-b"
    assert METHODS["corrclip"].model("clip") == METHODS["corrclip"].clip[0] and METHODS["corrclip"].clip[1] != "openai"
    assert METHODS["gla-proxyclip"].model("clip") == DEFAULT_CLIP and METHODS["sclip"].towers == ("clip",)
    assert isinstance(METHODS["trident"], Method)


def test_random_weights_of_any_tower_refuse_shards_and_resumes(tmp_path):
    real = {"model": "m", "structure": "s", "weights": "abc"}
    for tower in ("clip", "vfm", "sam"):
        identity = {"clip": dict(real), "vfm": dict(real), tower: dict(real, weights="random")}
        with pytest.raises(GlaclipError, match="shards would run different models"):
            check_random_weights(identity, Shard(0, 2), False, tmp_path, "--overwrite")
        with pytest.raises(GlaclipError, match="resuming would mix"):
            check_random_weights(identity, Shard(), True, tmp_path, "--overwrite")
    check_random_weights({"clip": real, "vfm": None, "sam": real}, Shard(0, 2), True, tmp_path, "--overwrite")


@pytest.fixture
def fake_sam(monkeypatch):
    """Trident's SAM from a 'checkpoint file': a tiny SAM whose weights are seeded by the file's bytes
    (segment-anything's registry builds only the full-size models)."""
    from conftest import tiny_sam

    import glaclip.models.sam as sam_module

    loaded = []

    def load(name, weights, device="auto", dtype="auto"):
        seed = 0 if weights == "random" else int(open(weights).read())
        tower = tiny_sam(seed=seed, dtype=torch.float32)
        tower.weights = str(weights)
        loaded.append((name, str(weights)))
        return tower

    monkeypatch.setattr(sam_module, "load_sam", load)
    return loaded


def _trident(tiny_files, out, *more):
    return ["segment", *more, "-c", "sky, cat", "--method", "trident", "-o", str(out),
            "--clip", tiny_files["clip"], "--clip-weights", tiny_files["clip_weights"], "--vfm", tiny_files["vfm"],
            "--vfm-weights", tiny_files["vfm_weights"], "--device", "cpu", "--set", "short_side=112",
            "--set", "crop=112", "--set", "stride=48", "--quiet", "--no-cache"]


def test_resuming_a_trident_run_with_other_sam_weights_is_refused(tiny_files, tmp_path, fake_sam):
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(structured_image(60, 80)).save(img)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_text("1")
    b.write_text("2")
    out = tmp_path / "out"
    first = CliRunner().invoke(app, _trident(tiny_files, out, str(img.parent), "--sam-weights", str(a)))
    assert first.exit_code == 0, first.output
    assert fake_sam == [("sam-vit-b", str(a))]
    manifest = next(out.glob(".glaclip-*.json")).read_text() if list(out.glob(".glaclip-*.json")) else ""
    same = CliRunner().invoke(app, _trident(tiny_files, out, str(img.parent), "--sam-weights", str(a)))
    assert same.exit_code == 0, same.output
    shutil.copy(a, tmp_path / "a-copy.pth")  # the same content at another path resumes too
    moved = CliRunner().invoke(app, _trident(tiny_files, out, str(img.parent), "--sam-weights",
                                             str(tmp_path / "a-copy.pth")))
    assert moved.exit_code == 0, moved.output
    other = CliRunner().invoke(app, _trident(tiny_files, out, str(img.parent), "--sam-weights", str(b)))
    assert other.exit_code != 0 and isinstance(other.exception, GlaclipError)
    assert "other settings (sam differ)" in str(other.exception), other.exception
    assert manifest == (next(out.glob(".glaclip-*.json")).read_text() if manifest else "")  # untouched


def test_random_sam_weights_are_part_of_the_identity(tiny_files, tmp_path, fake_sam):
    from glaclip import Segmenter
    from glaclip.runs.runner import model_identity

    seg = Segmenter.from_pretrained(method="trident", device="cpu", dtype="fp32", sam_weights="random", **tiny_files)
    identity = model_identity(seg)
    assert identity["sam"]["weights"] == "random" and identity["sam"]["model"] == "tiny-sam"
    with pytest.raises(GlaclipError, match="shards would run different models"):
        check_random_weights(identity, Shard(0, 2), False, tmp_path, "--overwrite")
    proxy = Segmenter.from_pretrained(method="proxyclip", device="cpu", dtype="fp32", **tiny_files)
    assert "sam" not in model_identity(proxy)  # methods without SAM keep the identity they had


needs_sam2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="the sam2 package is not installed")


@needs_sam2
def test_resuming_with_other_sam2_generator_weights_is_refused(files6, tmp_path):
    """A run whose region masks SAM 2 generates: other generator weights (by content) are other masks."""
    from glaclip.models.sam2 import load_sam2

    torch.manual_seed(0)
    sam = load_sam2("sam2-hiera-tiny", "random", device="cpu", dtype="auto")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"model": sam.model.state_dict()}, a)
    with torch.no_grad():
        sam.model.sam_mask_decoder.iou_token.weight.add_(1)
    torch.save({"model": sam.model.state_dict()}, b)
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(structured_image(48, 64)).save(img)
    out = tmp_path / "out"

    def run(weights):
        return CliRunner().invoke(app, [
            "segment", str(img.parent), "-m", "corrclip", "-c", "sky, road", "--sam", "sam2-hiera-tiny",
            "--sam-weights", str(weights), "-o", str(out), "--quiet", "--set", "short_side=112",
            "--clip", files6["clip"], "--clip-weights", files6["clip_weights"], "--vfm", files6["vfm"],
            "--vfm-weights", files6["vfm_weights"], "--device", "cpu", "--dtype", "fp32", "--no-cache"])

    assert run(a).exit_code == 0
    other = run(b)
    assert isinstance(other.exception, GlaclipError) and "other settings (masks differ)" in str(other.exception)
    assert np.asarray(Image.open(out / "a_labels.png")).shape == (48, 64)
