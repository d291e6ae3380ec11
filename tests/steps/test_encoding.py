"""Encode an image once, ask any class list: exact against a full run, saved and loaded, refused by
another model, method or setting, in the CLI and the demo."""

import json
import pickle

import numpy as np
import pytest
from conftest import run_cli, structured_image
from PIL import Image

from glaclip import GlaclipError, Segmenter, get_preset, resolve
from glaclip.steps.encoding import ImageEncoding

CLASSES = [["sky", "heaven"], ["road"], ["car", "vehicle", "automobile"], ["tree"]]
OTHER = ["building", "person; human", "grass", "water", "sky", "wall"]


@pytest.mark.parametrize("method, dataset", [("gla-proxyclip", None), ("proxyclip", None), ("naclip", "voc21"),
                                             ("sclip", "voc21"), ("gla-clearclip-release", None)])
@pytest.mark.parametrize("fixture, atol", [("segmenter64", 1e-12), ("segmenter", 1e-5)])
def test_predict_from_an_encoding_equals_a_full_run(request, fixture, atol, method, dataset):
    seg = request.getfixturevalue(fixture).with_preset(resolve(method, dataset, short_side=150))
    rgb = structured_image(130, 170, seed=2)
    enc = seg.encode_image(rgb)
    for classes in (CLASSES, OTHER):
        full = seg.predict(rgb, classes)
        again = seg.predict(enc, classes)
        np.testing.assert_allclose(again.probs, full.probs, atol=atol, rtol=0)
        assert (again.labels == full.labels).mean() >= 0.9999
    assert seg.predict(enc, CLASSES, prob_thd=0.9).preset.decision.prob_thd == 0.9  # decision settings may vary


def test_encoding_is_small_linear_in_windows_and_round_trips(segmenter, tmp_path):
    rgb = structured_image(320, 480, seed=3)
    enc = segmenter.encode_image(rgb)
    n, gh, gw, e = enc.embeddings.shape
    assert n == enc.grid.count and (gh, gw) == (28, 28) and e == segmenter.clip.visual.proj.shape[1]
    assert enc.nbytes < n * gh * gw * e * 4 + 4 * 3 * 336 * 504 + 1  # no full-resolution feature map
    path = enc.save(tmp_path / "street.encoding.safetensors")
    loaded = ImageEncoding.load(path)
    unpickled = pickle.loads(pickle.dumps(enc))
    base = segmenter.predict(enc, OTHER)
    for other in (loaded, unpickled):
        assert other.grid == enc.grid and other.size == enc.size and other.identity == enc.identity
        np.testing.assert_array_equal(segmenter.predict(other, OTHER).probs, base.probs)
    (tmp_path / "bad.encoding.safetensors").write_bytes(b"nonsense")
    with pytest.raises(GlaclipError, match="is not a glaclip image encoding"):
        ImageEncoding.load(tmp_path / "bad.encoding.safetensors")


def test_encoding_refused_by_another_model_method_or_setting(segmenter, segmenter64, tiny_files):
    enc = segmenter.encode_image(structured_image(100, 120))
    with pytest.raises(GlaclipError, match="differs .*in: .*method"):
        segmenter.with_preset(get_preset("proxyclip")).predict(enc, CLASSES)
    with pytest.raises(GlaclipError, match="in: .*window"):
        segmenter.with_preset(get_preset("gla-proxyclip", short_side=200)).predict(enc, CLASSES)
    with pytest.raises(GlaclipError, match="in: .*attention"):
        segmenter.with_preset(get_preset("gla-proxyclip", rho=0.6)).predict(enc, CLASSES)
    with pytest.raises(GlaclipError, match="in: .*dtype"):
        segmenter64.predict(enc, CLASSES)
    a = Segmenter.from_pretrained(clip=tiny_files["clip"], clip_weights="random", vfm=tiny_files["vfm"],
                                  vfm_weights="random", device="cpu")
    b = Segmenter.from_pretrained(clip=tiny_files["clip"], clip_weights="random", vfm=tiny_files["vfm"],
                                  vfm_weights="random", device="cpu")
    with pytest.raises(GlaclipError, match="in: models;"):
        b.predict(a.encode_image(structured_image(60, 80)), CLASSES)  # random weights differ per segmenter


def _run(tiny_files, *args, cwd):
    cmd = ["segment", *args, "--clip", tiny_files["clip"], "--clip-weights",
           tiny_files["clip_weights"], "--vfm", tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"],
           "--device", "cpu", "--set", "short_side=112", "-q"]
    return run_cli(*cmd, cwd=cwd)


def test_cli_save_and_segment_an_encoding(tiny_files, tmp_path):
    img = tmp_path / "street.png"
    Image.fromarray(structured_image(70, 90, seed=4)).save(img)
    r = _run(tiny_files, str(img), "-c", "sky, road", "-o", str(tmp_path / "a"), "--save-encoding", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    enc = tmp_path / "a" / "street.encoding.safetensors"
    assert enc.is_file()
    r = _run(tiny_files, str(enc), "-c", "car, tree; bush, sky", "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    direct = _run(tiny_files, str(img), "-c", "car, tree; bush, sky", "-o", str(tmp_path / "c"), cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr
    for name in ("street_labels.png", "street_overlay.png"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    rec = json.loads((tmp_path / "b" / "street.json").read_text())
    assert [c["name"] for c in rec["classes"]] == ["car", "tree", "sky"]
    img.unlink()  # the original image is gone: outputs without the overlay, one warning
    r = _run(tiny_files, str(enc), "-c", "car, sky", "-o", str(tmp_path / "d"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "without the overlay" in r.stderr and r.stderr.count("glaclip: warning:") == 1
    assert (tmp_path / "d" / "street_labels.png").exists() and not (tmp_path / "d" / "street_overlay.png").exists()
    other = _run(tiny_files, str(enc), "-c", "car, sky", "-o", str(tmp_path / "e"), "--method", "proxyclip",
                 cwd=tmp_path)
    assert other.returncode == 2 and "method" in other.stderr and "encode the image again" in other.stderr


def test_demo_reuses_encodings(segmenter, tmp_path):
    from glaclip.integrations.demo import EncodingCache, run_segmentation

    calls = []
    original = segmenter.window_features
    cache = EncodingCache()
    rgb = structured_image(60, 90, seed=5)
    try:
        segmenter.window_features = lambda crops, masks=None: calls.append(len(crops)) or original(crops, masks)
        first = run_segmentation(segmenter, rgb, "sky, road", "gla-proxyclip", 0.0, 0.5, tmp_path / "1",
                                 encodings=cache)
        n = len(calls)
        second = run_segmentation(segmenter, rgb, "car, tree, sky", "gla-proxyclip", 0.2, 0.5, tmp_path / "2",
                                  encodings=cache)
        assert len(calls) == n and not first["reused"] and second["reused"]  # no backbone forward the 2nd time
        third = run_segmentation(segmenter, rgb, "car", "proxyclip", 0.0, 0.5, tmp_path / "3", encodings=cache)
        assert len(calls) > n and not third["reused"]  # another method: encoded again
    finally:
        del segmenter.window_features  # back to the class's method (an instance attribute would be shared)
    small = EncodingCache(max_bytes=1)
    for seed in range(3):
        small.get_or_make(segmenter, structured_image(40, 50, seed=seed))
    assert len(small._items) == 1  # bounded: only the newest stays
