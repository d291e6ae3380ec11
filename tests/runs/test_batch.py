"""Whole collections: finding images, mirrored outputs, resume after kill -9, torchrun sharding,
COCO export, failures listed, windows of several images batched."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli, structured_image
from datafixtures import kill_when_logged
from PIL import Image

from glaclip import GlaclipError
from glaclip.io.export import rle_counts, rle_string
from glaclip.runs.collection import collect, walk_files


def _img(path, seed=0, size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(structured_image(*size, seed=seed)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """A folder tree with a name collision, a symlinked folder, hidden files, macOS companions and junk."""
    root = tmp_path / "photos"
    _img(root / "a" / "x.png", 1)
    _img(root / "b" / "x.png", 2)
    _img(root / "b" / "deep" / "y.jpg", 3)
    _img(root / "top.png", 4)
    (root / "a" / "._x.png").write_bytes(b"\x00\x05\x16\x07 apple double")
    _img(root / ".hidden" / "h.png", 5)
    _img(root / "a" / ".secret.png", 6)
    (root / "notes.txt").write_text("not an image")
    elsewhere = _img(tmp_path / "elsewhere" / "z.png", 7).parent
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "b" / "loop")  # a cycle must not be walked twice
    return root


def test_collect_folder_tree(tree):
    items = collect([str(tree)])
    assert [it.rel for it in items] == ["a/x", "b/deep/y", "b/x", "linked/z", "top"]
    assert [p.name for p in walk_files(tree)] == ["x.png", "y.jpg", "x.png", "z.png", "top.png"]


def test_collect_globs_lists_and_files(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"photos/a/x.png\n# a comment\n{tree / 'b' / 'x.png'}\n")
    assert [it.rel for it in collect([f"@{listing}"])] == ["a/x", "b/x"]
    assert [it.rel for it in collect([str(tree / "**" / "x.png")])] == ["a/x", "b/x"]
    assert [it.rel for it in collect([str(tree / "a" / "x.png"), str(tree / "b" / "x.png")])] == ["a/x", "b/x"]
    assert [it.rel for it in collect([str(tree / "top.png")])] == ["top"]
    with pytest.raises(GlaclipError, match="no files match"):
        collect([str(tree / "*.nothing")])
    with pytest.raises(GlaclipError, match="image not found"):
        collect([str(tree / "absent.png")])


def test_rle_matches_pycocotools():
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (40, 33)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            ref = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert rle_string(rle_counts(mask)) == ref["counts"].decode()


def _segment_args(tiny_files, *args):
    return ["segment", *args, "--clip", tiny_files["clip"], "--clip-weights", tiny_files["clip_weights"], "--vfm",
            tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"], "--device", "cpu", "--set",
            "short_side=112", "-q"]


def run(tiny_files, *args, cwd=None):
    """`glaclip segment ARGS` with the tiny models, in this process."""
    return run_cli(*_segment_args(tiny_files, *args), cwd=cwd)


def run_process(tiny_files, *args, launcher=(), timeout=600):
    """The same in a process of its own: for torchrun's launcher and for --processes N (torch.distributed's
    launcher, its signal handlers and its store, in the process that starts the ranks)."""
    cmd = [sys.executable, *launcher, "-m", "glaclip", *_segment_args(tiny_files, *args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _files(out):
    """Every output file's bytes, except the run's bookkeeping and the timing-bearing summaries."""
    skip = ("summary.csv", "summary.json", "glaclip-run.json")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".glaclip-progress" not in p.parts and p.name not in skip}


def _summary_rows(out):
    rows = json.loads((out / "summary.json").read_text())["images"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_folder_run_mirrors_inputs_and_exports_coco(tiny_files, tree, tmp_path):
    mask_util = pytest.importorskip("pycocotools.mask")
    out = tmp_path / "out"
    r = run(tiny_files, str(tree), "-c", "sky, road; street, car", "-o", str(out), "--export", "coco")
    assert r.returncode == 0, r.stderr
    for rel in ("a/x", "b/x", "b/deep/y", "linked/z", "top"):
        for suffix in ("_labels.png", "_overlay.png", ".json"):
            assert (out / (rel + suffix)).is_file(), rel + suffix
    assert not list(out.rglob("*h_labels.png")) and not list(out.rglob("*secret*"))
    doc = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["sky", "road", "car"]
    assert [im["file_name"] for im in doc["images"]] == ["a/x.png", "b/deep/y.jpg", "b/x.png", "linked/z.png",
                                                         "top.png"]
    for im in doc["images"]:
        labels = np.asarray(Image.open(out / (im["file_name"].rsplit(".", 1)[0] + "_labels.png")))
        painted = np.full(labels.shape, -1)
        for ann in (a for a in doc["annotations"] if a["image_id"] == im["id"]):
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            mask = mask_util.decode(rle).astype(bool)
            assert ann["area"] == int(mask.sum()) and ann["bbox"] == mask_util.toBbox(rle).astype(int).tolist()
            assert (painted[mask] == -1).all()
            painted[mask] = ann["category_id"] - 1
        np.testing.assert_array_equal(painted, labels)  # decodes back to exactly the label map
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert [r["status"] for r in rows] == ["ok"] * 5 and abs(sum(rows[0]["shares"].values()) - 1) < 1e-9
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header == "image,output,status,reason,seconds,share:sky,share:road,share:car"


def test_failures_are_listed_and_the_run_goes_on(tiny_files, tmp_path):
    data = tmp_path / "in"
    _img(data / "good.png", 1)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    r = run(tiny_files, str(data), "-c", "sky, road", "-o", str(out))
    assert r.returncode == 2 and "1 of 2 images failed" in r.stderr and "Traceback" not in r.stderr
    rows = {r["output"]: r for r in json.loads((out / "summary.json").read_text())["images"]}
    assert rows["good"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    assert "cannot read image" in rows["broken"]["reason"]
    assert (out / "good_labels.png").exists() and not (out / "broken_labels.png").exists()


def test_killed_run_resumes_to_identical_outputs(tiny_files, tmp_path):
    data = tmp_path / "in"
    for i in range(8):
        _img(data / f"im{i}.png", i, size=(60 + 4 * i, 80))
    args = [str(data), "-c", "sky, road, car", "-o", str(tmp_path / "o"), "--export", "coco", "--batch-images", "1"]
    cmd = [sys.executable, "-m", "glaclip", *_segment_args(tiny_files, *args)]  # killed: a process of its own
    log = tmp_path / "o" / ".glaclip-progress" / "rank0.jsonl"
    before = kill_when_logged(cmd, log)
    assert 2 <= before < 8 and not (tmp_path / "o" / "coco.json").exists()
    resumed = run(tiny_files, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert len(log.read_text().splitlines()) == 8  # finished images were not recomputed
    fresh = run(tiny_files, *args[:3], "-o", str(tmp_path / "fresh"), "--export", "coco", "--batch-images", "1")
    assert fresh.returncode == 0, fresh.stderr
    assert _files(tmp_path / "o") == _files(tmp_path / "fresh")
    assert _summary_rows(tmp_path / "o") == _summary_rows(tmp_path / "fresh")
    # other settings in the same folder: refused; --overwrite starts over
    other = run(tiny_files, *args, "--set", "rho=0.6")
    assert other.returncode == 2 and "other settings (preset, settings differ)" in other.stderr
    assert run(tiny_files, *args, "--set", "rho=0.6", "--overwrite").returncode == 0


def test_two_process_torchrun_equals_one_process_byte_for_byte(tiny_files, tmp_path):
    data = tmp_path / "in"
    for i in range(5):
        _img(data / ("sub" if i % 2 else "") / f"im{i}.png", i, size=(56 + 8 * i, 72))
    base = [str(data), "-c", "sky, road; street, car", "--export", "coco", "--save-probs"]
    one = run(tiny_files, *base, "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = run_process(tiny_files, *base, "-o", str(tmp_path / "two"),
                      launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two" / ".glaclip-progress").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) == 5 * 4 + 1 and a == b  # labels, overlays, JSON, probabilities and coco.json
    assert _summary_rows(tmp_path / "one") == _summary_rows(tmp_path / "two")


def test_windows_of_several_images_in_one_forward_give_the_same_result(segmenter64):
    images = [structured_image(60 + 10 * i, 90, seed=i) for i in range(4)]
    classes = ["sky", "road; street", "car"]
    alone = [segmenter64.predict(im, classes) for im in images]
    together = segmenter64.predict_many(images, classes, max_windows=64)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-12, rtol=0)


def test_eval_folder_reader_uses_the_same_rules(tmp_path):
    from datafixtures import write_folder

    from glaclip.runs.datasets import open_dataset

    write_folder(tmp_path / "d", n=2)
    (tmp_path / "d" / "images" / "._img0.png").write_bytes(b"apple double")
    _img(tmp_path / "d" / "images" / ".hidden.png")
    assert [s.name for s in open_dataset("folder", tmp_path / "d").samples] == ["img0", "img1"]
