"""Region masks on the command line: `--masks FILE|DIR`, `--sam/--sam-weights`, `--save-masks` in
`glaclip segment` and `glaclip eval` (CorrCLIP with a 6-block tiny CLIP), per-image failures, the
run identity, and the early one-line errors."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import run_cli, structured_image
from datafixtures import write_layout
from PIL import Image

from glaclip import GlaclipError, Segmenter
from glaclip.io.masks import fingerprint, load_masks

SMALL = ("--set", "short_side=112")


def region_map(h, w, seed=0, ids=6):
    """Blocks of region ids 0..ids-1 (0: covered by no mask), like a painted SAM output."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, ids, size=(4, 5))
    return np.kron(blocks, np.ones((h // 4 + 1, w // 5 + 1), int))[:h, :w].astype(np.int32)


def _png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _npz(path, masks):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, instance_mask=masks)


def _png16(path, masks):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(masks.astype(np.uint16)).save(path)


def segment(files, *args, command="segment"):
    models = ["--clip", files["clip"], "--clip-weights", files["clip_weights"], "--vfm", files["vfm"],
              "--vfm-weights", files["vfm_weights"], "--device", "cpu", "--dtype", "fp32"]
    return run_cli(command, *args, *models)


@pytest.fixture(scope="module")
def corrclip(files6):
    return Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp32", short_side=112, **files6)


def _labels(path):
    return np.asarray(Image.open(path))


def test_single_image_with_a_mask_file_or_folder(files6, corrclip, tmp_path):
    rgb = structured_image(90, 130, seed=3)
    _png(tmp_path / "in" / "street.png", rgb)
    masks = region_map(90, 130, seed=1)
    _npz(tmp_path / "one.npz", masks)
    _png16(tmp_path / "dir" / "street.png", masks)
    classes = "sky, road; street, car"
    want = corrclip.predict(rgb, classes, masks=masks).labels
    for given in (tmp_path / "one.npz", tmp_path / "dir"):
        out = tmp_path / f"out-{given.name}"
        r = segment(files6, str(tmp_path / "in" / "street.png"), "-m", "corrclip", "-c", classes, "--masks",
                    str(given), "-o", str(out), *SMALL)
        assert r.returncode == 0, r.stderr
        assert f"region masks from {'file' if given.is_file() else 'folder'} {given}" in r.stderr
        np.testing.assert_array_equal(_labels(out / "street_labels.png"), want)
        record = json.loads((out / "street.json").read_text())
        assert record["masks"]["fingerprint"] == fingerprint(masks)
        log = [json.loads(line) for line in (out / ".glaclip-progress" / "rank0.jsonl").read_text().splitlines()]
        assert [rec["masks"] for rec in log] == [fingerprint(masks)]
        manifest = json.loads((out / "glaclip-run.json").read_text())
        kind = "file" if given.is_file() else "folder"
        assert manifest["masks"] == {kind: os.path.realpath(given)}
    # the masks are read: other masks, other labels (the check above can fail)
    other = corrclip.predict(rgb, classes, masks=region_map(90, 130, seed=7)).labels
    assert not np.array_equal(other, want)


def test_collection_lists_missing_and_unfit_masks_and_goes_on(files6, corrclip, tmp_path):
    data, mdir = tmp_path / "in", tmp_path / "masks"
    sizes = {"a/x": (60, 80), "b/y": (64, 72), "b/z": (56, 88), "top": (60, 60)}
    for i, (rel, (h, w)) in enumerate(sizes.items()):
        _png(data / f"{rel}.png", structured_image(h, w, seed=i))
    _npz(mdir / "a" / "x.npz", region_map(60, 80, 1))  # mirrored
    _npz(mdir / "top.npz", region_map(60, 60, 2))
    _png16(mdir / "b" / "y.png", region_map(64, 70, 3))  # wrong size
    # b/z: no mask file, neither mirrored nor flat
    out = tmp_path / "out"
    r = segment(files6, str(data), "-m", "corrclip", "-c", "sky, road, car", "--masks", str(mdir), "-o", str(out),
                "-q", *SMALL)
    assert r.returncode == 2 and "2 of 4 images failed (others were written)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    rows = {row["output"]: row for row in json.loads((out / "summary.json").read_text())["images"]}
    assert {k: v["status"] for k, v in rows.items()} == {"a/x": "ok", "b/y": "failed", "b/z": "failed", "top": "ok"}
    y, z = rows["b/y"]["reason"], rows["b/z"]["reason"]
    assert str(data / "b" / "y.png") in y and str(mdir / "b" / "y.png") in y and "70x64, the image is 72x64" in y
    assert str(data / "b" / "z.png") in z and "no mask file for b/z.png" in z and str(mdir) in z
    assert len(y.splitlines()) == len(z.splitlines()) == 1
    assert not list(out.glob("b/*"))  # nothing written for the failed images
    for rel, seed in (("a/x", 1), ("top", 2)):
        h, w = sizes[rel]
        want = corrclip.predict(structured_image(h, w, seed=list(sizes).index(rel)), "sky, road, car",
                                masks=region_map(h, w, seed)).labels
        np.testing.assert_array_equal(_labels(out / f"{rel}_labels.png"), want)


def test_resume_is_refused_when_the_mask_source_changes(files6, tmp_path):
    data = tmp_path / "in"
    for i in range(2):
        _png(data / f"im{i}.png", structured_image(48, 64, seed=i))
        for d in ("m1", "m2"):
            _npz(tmp_path / d / f"im{i}.npz", region_map(48, 64, seed=i + (d == "m2")))
    base = [str(data), "-m", "corrclip", "-c", "sky, road", "-o", str(tmp_path / "o"), "-q", *SMALL]
    assert segment(files6, *base, "--masks", str(tmp_path / "m1")).returncode == 0
    log = tmp_path / "o" / ".glaclip-progress" / "rank0.jsonl"
    again = segment(files6, *base, "--masks", str(tmp_path / "m1"))
    assert again.returncode == 0 and len(log.read_text().splitlines()) == 2  # resumed: nothing recomputed
    # same folder, new content for one image: that image (only) is segmented again, and says so
    _npz(tmp_path / "m1" / "im1.npz", region_map(48, 64, seed=7))
    changed = segment(files6, *[a for a in base if a != "-q"], "--masks", str(tmp_path / "m1"))
    assert changed.returncode == 0, changed.stderr
    assert "1 finished image(s) have other region masks now than when segmented" in changed.stderr
    assert [json.loads(r)["output"] for r in log.read_text().splitlines()][2:] == ["im1"]
    other = segment(files6, *base, "--masks", str(tmp_path / "m2"))
    assert other.returncode == 2 and "other settings (masks differ)" in other.stderr, other.stderr
    assert segment(files6, *base, "--masks", str(tmp_path / "m2"), "--overwrite").returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="the sam2 package is not installed")
def test_save_masks_writes_what_the_encoding_used(files6, tmp_path):
    """One small image (SAM 2 on the CPU takes seconds even for hiera-tiny): its generated masks are
    written as an output kind, logged by fingerprint, and are the masks its encoding holds."""
    from glaclip.steps.encoding import ImageEncoding

    data = tmp_path / "in"
    _png(data / "sub" / "b.png", structured_image(48, 64, seed=6))
    out = tmp_path / "out"
    r = segment(files6, str(data), "-m", "corrclip", "-c", "sky, road, car", "--sam", "sam2-hiera-tiny",
                "--sam-weights", "random", "--save-masks", "--save-encoding", "-o", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    assert "region masks generated by sam2-hiera-tiny (random)" in r.stderr
    (rec,) = map(json.loads, (out / ".glaclip-progress" / "rank0.jsonl").read_text().splitlines())
    manifest = json.loads((out / "glaclip-run.json").read_text())
    assert manifest["masks"]["sam"]["model"] == "sam2-hiera-tiny" and manifest["outputs"]["save_masks"] is True
    masks = load_masks(out / "sub" / "b.masks.npz", (48, 64))
    assert rec["files"]["masks"] == "sub/b.masks.npz" and rec["masks"] == fingerprint(masks)
    enc = ImageEncoding.load(out / "sub" / "b.encoding.safetensors")
    np.testing.assert_array_equal(enc.masks.numpy(), masks)  # the masks the encoding was made with
    assert json.loads((out / "sub" / "b.json").read_text())["masks"]["fingerprint"] == fingerprint(masks)
    # the saved encoding holds its masks: segmenting it again with other classes needs neither option
    again = segment(files6, str(out / "sub" / "b.encoding.safetensors"), "-m", "corrclip", "-c", "sky, tree",
                    "-o", str(tmp_path / "again"), "-q", *SMALL)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "b_labels.png").is_file()
    # the output folder is a mask folder: --masks OUT finds sub/b.masks.npz for in/sub/b.png
    reuse = segment(files6, str(data), "-m", "corrclip", "-c", "sky, road, car", "--masks", str(out),
                    "-o", str(tmp_path / "reuse"), "-q", *SMALL)
    assert reuse.returncode == 0, reuse.stderr
    (rec2,) = map(json.loads, (tmp_path / "reuse" / ".glaclip-progress" / "rank0.jsonl").read_text().splitlines())
    assert rec2["masks"] == rec["masks"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "reuse" / "sub" / "b_labels.png")),
                                  np.asarray(Image.open(out / "sub" / "b_labels.png")))


def test_eval_with_precomputed_masks_records_their_source(files6, tmp_path):
    root, mdir = tmp_path / "VOC2012", tmp_path / "region_masks" / "voc"
    names = write_layout(root, "voc21", n=2, size=(60, 90))
    for i, name in enumerate(names):  # flat by stem, as the release's region_masks/voc
        _npz(mdir / f"{name}.npz", region_map(60, 90, seed=i))
    args = ["--dataset", "voc21", "--data-root", str(root), "-m", "corrclip", "--out", str(tmp_path / "o"), *SMALL]
    r = segment(files6, *args, "--masks", str(mdir), command="eval")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["masks"] == {"source": f"from folder {mdir}", "folder": os.path.realpath(mdir)}
    assert res["images"] == 2 and len(res["per_class"]) == 21
    # the numbers are those of the API with the same masks
    from glaclip.runs.datasets import open_dataset
    from glaclip.runs.metrics import confusion

    seg = Segmenter.from_pretrained(method="corrclip", dataset="voc21", device="cpu", dtype="fp32", short_side=112,
                                    **files6)
    ds = open_dataset("voc21", root, packaged=seg.preset.class_file)
    cm = sum(confusion(seg.predict(s.image, ds.classes, masks=region_map(60, 90, seed=i)).labels, ds.load_label(s),
                       len(ds.classes), 255) for i, s in enumerate(ds.samples))
    assert np.array_equal(np.asarray(res["confusion"]), cm)
    # a missing mask file stops the benchmark with one line naming the image and the folder
    (mdir / f"{names[1]}.npz").unlink()
    bad = segment(files6, *args, "--masks", str(mdir), "--no-resume", command="eval")
    lines = [line for line in bad.stderr.splitlines() if line.startswith("glaclip: error")]
    assert bad.returncode == 2 and len(lines) == 1 and names[1] in lines[0] and str(mdir) in lines[0], bad.stderr


@pytest.mark.parametrize("args, words", [
    (["-m", "corrclip"], "method corrclip needs region masks: give --masks DIR (mask files) or --sam NAME"),
    (["-m", "gla-proxyclip", "--set", "mask_vote=true"], "needs region masks: give --masks DIR"),
    (["-m", "corrclip", "--masks", "M", "--sam", "sam2-hiera-tiny"], "not both"),
    (["-m", "corrclip", "--masks", "M", "--sam-weights", "random"], "not both"),
    (["-m", "corrclip", "--masks", "M", "--save-masks"], "--save-masks writes the masks SAM 2 generates"),
    (["-m", "corrclip", "--masks", "nowhere"], "--masks nowhere: no such file or folder"),
    (["-m", "corrclip", "--sam", "sam3-giant"], "unknown --sam 'sam3-giant'"),
    (["-m", "corrclip", "--sam-weights", "absent.pt"], "--sam-weights absent.pt: file not found"),
])
def test_early_errors_before_any_model_loads(tmp_path, args, words):
    """One line, exit 2, nothing written; the model files do not even exist (nothing was loaded)."""
    (tmp_path / "M").mkdir()
    _png(tmp_path / "a.png", structured_image(40, 40))
    out = tmp_path / "out"
    r = run_cli("segment", "a.png", "-c", "sky", "-o", out, *args, "--clip-weights", "missing-clip.pt",
                "--vfm-weights", "missing-vfm.pt", "--device", "cpu", cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_mask_file_for_a_folder_and_unused_masks(tiny_files, tmp_path):
    for i in range(2):
        _png(tmp_path / "in" / f"{i}.png", structured_image(40, 40, seed=i))
    _npz(tmp_path / "m.npz", region_map(40, 40))
    r = segment(tiny_files, str(tmp_path / "in"), "-m", "corrclip", "-c", "sky", "--masks", str(tmp_path / "m.npz"),
                "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "fits a single image; give a folder" in r.stderr
    # masks given to a method that reads none: one warning line, the run goes on without them
    r = segment(tiny_files, str(tmp_path / "in"), "-c", "sky, road", "--masks", str(tmp_path / "in"),
                "-o", str(tmp_path / "o2"), "-q", *SMALL)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ("glaclip: warning: method gla-proxyclip does not use region masks, so --masks is "
                                "ignored (--set mask_vote=true corrects any method's map region by region)")
    assert json.loads((tmp_path / "o2" / "glaclip-run.json").read_text())["masks"] is None


def test_eval_lookup_is_relative_to_the_image_folder_with_a_flat_fallback(tmp_path):
    """Cityscapes images sit in city folders and their stems keep `_leftImg8bit`: a mirrored file
    wins, else the release's flat folder by stem; a folder data set looks under its images/."""
    from glaclip.runs.datasets import open_dataset
    from glaclip.runs.mask_source import MaskRequest, MaskSource

    write_layout(tmp_path / "cityscapes", "cityscapes", n=2, size=(40, 80))
    ds = open_dataset("cityscapes", tmp_path / "cityscapes")
    rel = [ds.image_relative(s).as_posix() for s in ds.samples]
    assert rel == ["frankfurt/frankfurt_000000_leftImg8bit.png", "frankfurt/frankfurt_000001_leftImg8bit.png"]
    mdir = tmp_path / "region_masks" / "city"
    _npz(mdir / "frankfurt_000000_leftImg8bit.npz", region_map(40, 80, 1))  # flat, as released
    _npz(mdir / "frankfurt" / "frankfurt_000001_leftImg8bit.npz", region_map(40, 80, 2))  # mirrored
    source = MaskSource(MaskRequest(path=mdir))
    for s, seed in zip(ds.samples, (1, 2)):
        np.testing.assert_array_equal(source.read(s.image, ds.image_relative(s), (40, 80)), region_map(40, 80, seed))
    with pytest.raises(GlaclipError, match="the image is 80x30") as err:
        source.read(ds.samples[0].image, ds.image_relative(ds.samples[0]), (30, 80))
    assert str(ds.samples[0].image) in str(err.value) and "frankfurt_000000_leftImg8bit.npz" in str(err.value)
