import json

import numpy as np
import pytest
from conftest import run_cli, structured_image
from PIL import Image


def run(args, tiny_files, cwd):
    models = {"--clip": tiny_files["clip"], "--clip-weights": tiny_files["clip_weights"], "--vfm": tiny_files["vfm"],
              "--vfm-weights": tiny_files["vfm_weights"], "--device": "cpu"}
    extra = [x for k, v in models.items() if k not in args for x in (k, v)]
    return run_cli("segment", *args, *extra, cwd=cwd)


@pytest.fixture
def images(tmp_path):
    a, b = tmp_path / "street.jpg", tmp_path / "gray.png"
    Image.fromarray(structured_image(180, 260)).save(a, quality=95)
    Image.fromarray(structured_image(150, 150, seed=2)[..., 0]).save(b)
    return a, b


def test_segment_end_to_end(tiny_files, images, tmp_path):
    out = tmp_path / "out"
    r = run([str(images[0]), str(images[1]), "-c", "sky, road; street", "-c", "car", "-o", str(out), "--save-probs",
             "--set", "rho=0.6"], tiny_files, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rho=0.6" in r.stderr  # the effective preset is printed
    for stem, (h, w) in (("street", (180, 260)), ("gray", (150, 150))):
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == (w, h)
        assert np.asarray(labels).max() < 3
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width == w and overlay.height > h  # legend strip below the image
        record = json.loads((out / f"{stem}.json").read_text())
        assert [c["name"] for c in record["classes"]] == ["sky", "road", "car"]
        assert record["classes"][1]["synonyms"] == ["road", "street"]
        assert abs(sum(c["share"] for c in record["classes"]) - 1) < 1e-6
        assert record["preset"]["attention"]["rho"] == 0.6 and "rho=0.6" in record["preset_line"]
        npz = np.load(out / f"{stem}_probs.npz")
        assert npz["probs"].shape == (3, h, w)
        np.testing.assert_array_equal(npz["labels"], np.asarray(labels))
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_class_file_and_failures_keep_other_outputs(tiny_files, images, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("background; sky; wall\nperson\n")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    r = run([str(bad), str(images[0]), "-f", str(classes), "-o", str(out), "--prob-thd", "0.9"], tiny_files, tmp_path)
    assert r.returncode != 0
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir() if "street" in p.name or "broken" in p.name) == [
        "street.json", "street_labels.png", "street_overlay.png"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["-c", ""], "class list is empty"),
        (["-c", "cat, cat"], "duplicate"),
        ([], "no classes"),
        (["-c", "cat", "--set", "rho"], "KEY=VALUE"),
        (["-c", "cat", "--set", "nonsense=1"], "unknown setting"),
        (["-c", "cat", "--set", "rho=high"], "needs a float"),
        (["-c", "cat", "--method", "magic"], "unknown preset"),
        (["-c", "cat", "--clip-weights", "missing.pt"], "not found"),
    ],
)
def test_bad_input_one_line_no_output(tiny_files, images, tmp_path, args, words):
    out = tmp_path / "out"
    r = run([str(images[0]), "-o", str(out), *args], tiny_files, tmp_path)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("glaclip: error:"), r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_missing_image_fails_before_loading(tiny_files, tmp_path):
    r = run([str(tmp_path / "nope.jpg"), "-c", "cat", "-o", str(tmp_path / "o")], tiny_files, tmp_path)
    assert r.returncode == 2 and "image not found" in r.stderr


def test_help_reads_well():
    r = run_cli("--help")
    assert r.returncode == 0 and "segment" in r.stdout and "presets" in r.stdout
    r = run_cli("segment", "--help")
    assert r.returncode == 0 and "--class-file" in r.stdout and "--clip-weights" in r.stdout
    r = run_cli("presets")
    assert r.returncode == 0 and "preset=gla-proxyclip " in r.stdout and "rho=0.55" in r.stdout


def test_methods_listing():
    r = run_cli("methods")
    assert r.returncode == 0
    for name in ("clip ", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "gla-clearclip", "gla-naclip"):
        assert name in r.stdout
    assert "NACLIP (Hajimiri et al., WACV 2025)" in r.stdout and "gaussian_std=5.0" in r.stdout


def test_segment_with_a_dataset_protocol_records_every_setting(tiny_files, images, tmp_path):
    out = tmp_path / "out"
    r = run([str(images[0]), "--method", "sclip", "--dataset", "voc21", "-o", str(out), "--set", "short_side=200"],
            tiny_files, tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "street.json").read_text())["settings"]
    assert (s["method"], s["dataset"], s["protocol"], s["class_file"]) == ("sclip", "voc21", "sclip", "voc21.txt")
    assert (s["logit_scale"], s["prob_thd"], s["area_thd"], s["short_side"]) == (65.0, 0.1, 0.1, 200)
    assert len(s["queries"]) == 56
    r = run([str(images[0]), "-c", "sky, road", "--method", "naclip", "-o", str(tmp_path / "o2")], tiny_files, tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "o2" / "street.json").read_text())["settings"]
    assert s["dataset"] is None and s["pamr_steps"] == 10 and s["queries"] == ["sky", "road"]
