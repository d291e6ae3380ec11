"""Region masks under a hostile user trial (issue 25): masks beside a saved encoding, colliding stems,
the image folder given as the mask folder, mask files changing under a finished run, the failure
summary, and EXIF-rotated images."""

import json

import numpy as np
import pytest
from conftest import structured_image
from PIL import Image
from test_masks_cli import SMALL, _labels, _npz, _png, _png16, region_map, segment

from glaclip import GlaclipError, Segmenter
from glaclip.io.masks import fingerprint
from glaclip.runs.collection import collect
from glaclip.runs.mask_source import MaskRequest, MaskSource


@pytest.fixture(scope="module")
def corrclip(files6):
    return Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp32", short_side=112, **files6)


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("glaclip: error")]


def _source(mdir, items=None):
    source = MaskSource(MaskRequest(path=mdir))
    return source.indexed(items) if items is not None else source


def _read(source, it, size):
    return source.read(it.path, it.name, size)


def test_masks_beside_a_saved_encoding_follow_the_api_rule(files6, corrclip, tmp_path):
    """--masks with a saved encoding: the masks it was made with must be the given ones (as the API's
    predict(encoding, masks=...)); other masks are refused before any model loads."""
    rgb, mine, other = structured_image(48, 64, seed=2), region_map(48, 64, 1), region_map(48, 64, 5)
    enc = corrclip.encode_image(rgb, masks=mine)
    enc.save(tmp_path / "x.encoding.safetensors")
    _npz(tmp_path / "b.npz", other)
    _npz(tmp_path / "a.npz", mine)
    with pytest.raises(GlaclipError, match="differ from the ones the image encoding was made with") as api:
        corrclip.predict(enc, "sky, road", masks=other)
    no_models = {"clip": files6["clip"], "vfm": files6["vfm"], "clip_weights": "missing-clip.pt",
                 "vfm_weights": "missing-vfm.pt"}
    r = segment(no_models, str(tmp_path / "x.encoding.safetensors"), "-m", "corrclip", "-c", "sky, road",
                "--masks", str(tmp_path / "b.npz"), "-o", str(tmp_path / "o"), *SMALL)
    assert r.returncode == 2 and len(_errors(r.stderr)) == 1, r.stderr
    assert str(api.value) in _errors(r.stderr)[0] and "missing" not in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # the masks it was made with: accepted, and the output names them truthfully
    ok = segment(files6, str(tmp_path / "x.encoding.safetensors"), "-m", "corrclip", "-c", "sky, road",
                 "--masks", str(tmp_path / "a.npz"), "-o", str(tmp_path / "o2"), "-q", *SMALL)
    assert ok.returncode == 0, ok.stderr
    record = json.loads((tmp_path / "o2" / "x.json").read_text())
    assert record["masks"]["fingerprint"] == fingerprint(mine) and str(tmp_path / "a.npz") in record["masks"]["source"]
    np.testing.assert_array_equal(_labels(tmp_path / "o2" / "x_labels.png"), corrclip.predict(enc, "sky, road").labels)


def test_colliding_stems_read_their_own_masks(files6, corrclip, tmp_path):
    """x.jpg and x.png side by side: outputs x and x_png, and masks by the same names (--save-masks'
    x.masks.npz and x_png.masks.npz), never x.jpg's for x.png."""
    data, mdir = tmp_path / "in", tmp_path / "m"
    data.mkdir()
    Image.fromarray(structured_image(48, 64, seed=1)).save(data / "x.jpg", quality=95)
    _png(data / "x.png", structured_image(48, 64, seed=2))
    _npz(mdir / "x.masks.npz", region_map(48, 64, 1))
    _npz(mdir / "x_png.masks.npz", region_map(48, 64, 2))
    out = tmp_path / "o"
    r = segment(files6, str(data), "-m", "corrclip", "-c", "sky, road, car", "--masks", str(mdir), "-o", str(out),
                "-q", *SMALL)
    assert r.returncode == 0, r.stderr
    for name, seed in (("x", 1), ("x_png", 2)):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["masks"]["fingerprint"] == fingerprint(region_map(48, 64, seed)), name
    want = corrclip.predict(str(data / "x.png"), "sky, road, car", masks=region_map(48, 64, 2)).labels
    np.testing.assert_array_equal(_labels(out / "x_png_labels.png"), want)


def test_ambiguous_lookups_name_the_image_and_the_files(tmp_path):
    data, mdir = tmp_path / "in", tmp_path / "m"
    for rel in ("x.jpg", "x.png", "a/y.png", "b/y.png", "z.png"):
        _png(data / rel, structured_image(8, 8))
    items = {it.name: it for it in collect([str(data)])}
    assert items["x.png"].rel == "x_png"
    _npz(mdir / "x.npz", region_map(8, 8, 1))  # by stem: x.jpg's or x.png's?
    _npz(mdir / "y.npz", region_map(8, 8, 2))  # flat: a/y.png's or b/y.png's?
    _npz(mdir / "z.npz", region_map(8, 8, 3))
    _png16(mdir / "z.png", region_map(8, 8, 3))  # two files for one image
    source = _source(mdir, list(items.values()))
    for name, files in (("x.jpg", ["x.npz", "x.png"]), ("x.png", ["x.npz", "x.jpg"]), ("a/y.png", ["y.npz", "b/y.png"]),
                        ("b/y.png", ["y.npz", "a/y.png"]), ("z.png", ["z.npz", "z.png"])):
        with pytest.raises(GlaclipError) as err:
            _read(source, items[name], (8, 8))
        msg = str(err.value)
        assert "\n" not in msg and str(items[name].path) in msg and all(f in msg for f in files), msg
    # named after the outputs, each image has its own file; the mirrored file wins over the flat one
    _npz(mdir / "x_png.npz", region_map(8, 8, 4))
    _npz(mdir / "a" / "y.npz", region_map(8, 8, 5))
    source = _source(mdir, list(items.values()))
    np.testing.assert_array_equal(_read(source, items["x.png"], (8, 8)), region_map(8, 8, 4))
    np.testing.assert_array_equal(_read(source, items["a/y.png"], (8, 8)), region_map(8, 8, 5))
    np.testing.assert_array_equal(_read(source, items["b/y.png"], (8, 8)), region_map(8, 8, 2))
    np.testing.assert_array_equal(_read(source, items["x.jpg"], (8, 8)), region_map(8, 8, 1))  # its output name


def test_input_images_are_never_read_as_masks_and_an_all_failed_run_says_so(files6, tmp_path):
    """--masks given the image folder itself: grayscale images would pass as id maps; each image is
    refused with one line, and the summary does not claim that others were written."""
    data = tmp_path / "in"
    data.mkdir()
    for i in range(2):
        Image.fromarray(structured_image(40, 48, seed=i)[..., 0]).save(data / f"g{i}.png")  # mode L
    out = tmp_path / "o"
    r = segment(files6, str(data), "-m", "corrclip", "-c", "sky, road", "--masks", str(data), "-o", str(out), "-q",
                *SMALL)
    assert r.returncode == 2 and len(_errors(r.stderr)) == 1, r.stderr
    assert "2 of 2 images failed" in r.stderr and "others were written" not in r.stderr
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert [row["status"] for row in rows] == ["failed", "failed"]
    assert all("input image" in row["reason"] and str(data / row["output"]) + ".png" in row["reason"] for row in rows)
    assert not list(out.glob("g[01]*"))
    # a single image and its own file, as the mask file or found in its folder
    items = collect([str(data / "g0.png")])
    for given in (data / "g0.png", data):
        with pytest.raises(GlaclipError, match="input image"):
            _read(_source(given, items), items[0], (40, 48))


def test_a_resume_keeps_finished_outputs_when_the_masks_become_ambiguous(files6, tmp_path):
    data, mdir, out = tmp_path / "in", tmp_path / "m", tmp_path / "o"
    for i in range(2):
        _png(data / f"im{i}.png", structured_image(40, 48, seed=i))
        _npz(mdir / f"im{i}.npz", region_map(40, 48, seed=i))
    args = [str(data), "-m", "corrclip", "-c", "sky, road", "--masks", str(mdir), "-o", str(out), *SMALL]
    assert segment(files6, *args, "-q").returncode == 0
    before = {p: p.read_bytes() for p in out.glob("im*")}
    _png16(mdir / "im1.png", region_map(40, 48, seed=9))  # a second file for a finished image
    (mdir / "im0.npz").unlink()  # and a finished image's file gone
    r = segment(files6, *args)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("glaclip: warning")]
    assert len(warned) == 2 and all("kept" in line for line in warned), r.stderr
    assert any(str(mdir / "im1.npz") in w and str(mdir / "im1.png") in w for w in warned)
    assert {p: p.read_bytes() for p in out.glob("im*")} == before
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    # asking for a new kind of output redoes finished images: not those whose masks cannot be read now
    r = segment(files6, *args, "-q", "--save-probs")
    assert r.returncode == 0 and r.stderr.count("kept") == 2, r.stderr
    assert {p: p.read_bytes() for p in out.glob("im*")} == before


def _exif_jpeg(path, rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif, quality=95)


def test_mask_size_errors_explain_the_exif_rotation(segmenter, tmp_path):
    from glaclip.io.images import load_image

    _exif_jpeg(tmp_path / "r.jpg", structured_image(40, 64), 6)  # stored 64x40, displayed 40x64
    _exif_jpeg(tmp_path / "f.jpg", structured_image(40, 64), 3)  # rotated 180: same size
    size = load_image(tmp_path / "r.jpg").shape[:2]
    assert size == (64, 40)
    mdir = tmp_path / "m"
    _npz(mdir / "r.npz", region_map(40, 64, 1))  # the stored (un-rotated) size
    _npz(mdir / "f.npz", region_map(40, 60, 1))
    source = _source(mdir)
    with pytest.raises(GlaclipError) as err:
        source.read(tmp_path / "r.jpg", "r.jpg", size)
    assert "matches the image before its EXIF rotation" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GlaclipError, match="EXIF") as err:
        source.read(tmp_path / "f.jpg", "f.jpg", (40, 64))
    assert "before its EXIF rotation" not in str(err.value)
    _npz(mdir / "r.npz", region_map(64, 40, 1))  # the displayed size: read
    np.testing.assert_array_equal(source.read(tmp_path / "r.jpg", "r.jpg", size), region_map(64, 40, 1))
    # the API says so too for an image file
    with pytest.raises(GlaclipError, match="matches the image before its EXIF rotation"):
        segmenter.encode_image(tmp_path / "r.jpg", masks=region_map(40, 64, 1))
