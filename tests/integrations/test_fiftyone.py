"""FiftyOne: glaclip as a model in `dataset.apply_model`, `glaclip segment --export fiftyone` imported
with `fo.Dataset.from_dir`, and `evaluate_segmentations` on the results, on a real FiftyOne data set
in its bundled database (started by FiftyOne in a temporary folder, never the user's)."""

import importlib
import json
import os
import sys

import numpy as np
import pytest
from conftest import run_cli, structured_image
from PIL import Image

from glaclip import GlaclipError
from glaclip.io.export import mask_image
from glaclip.runs.collection import collect

CLASSES = "background, sky, road; street, car; vehicle"
NAMES = ["background", "sky", "road", "car"]


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """FiftyOne, its database (the bundled MongoDB, started on first use) in pytest's temporary folder
    (kept for the last 3 sessions, as pytest does), never the user's ~/.fiftyone nor a database URI."""
    settings = {"database_dir": str(tmp_path_factory.mktemp("fiftyone-db")), "database_uri": None,
                "do_not_track": True, "database_validation": False, "show_progress_bars": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIFTYONE_DATABASE_URI", raising=False)
        mp.setenv("FIFTYONE_DATABASE_DIR", settings["database_dir"])  # read when fiftyone is imported
        fo = pytest.importorskip("fiftyone", reason="fiftyone is not installed (pip install 'glaclip[fiftyone]')")
        for key, value in settings.items():  # in case it was imported before
            mp.setattr(fo.config, key, value)
        yield fo


@pytest.fixture(scope="module")
def model(fo, tiny_files):
    from glaclip.integrations.fiftyone import GlaclipModel

    return GlaclipModel(CLASSES, device="cpu", dtype="fp32", short_side=112, **tiny_files)


@pytest.fixture
def dataset(fo):
    ds = fo.Dataset()
    yield ds
    ds.delete()


def _img(path, seed, size, suffix_kwargs=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(structured_image(*size, seed=seed)).save(path, **(suffix_kwargs or {}))
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    return [_img(root / "a.png", 1, (48, 64)), _img(root / "sub" / "b.png", 2, (40, 56)),
            _img(root / "c.jpg", 3, (52, 44), {"quality": 90})]


def _run(tiny_files, *args):
    cmd = ["segment", *args, "--clip", tiny_files["clip"], "--clip-weights",
           tiny_files["clip_weights"], "--vfm", tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"],
           "--device", "cpu", "--dtype", "fp32", "--set", "short_side=112", "-q"]
    return run_cli(*cmd)


def test_missing_extra_is_one_line(monkeypatch):
    for name in ("fiftyone", "fiftyone.core", "fiftyone.core.models", "fiftyone.core.labels"):
        monkeypatch.setitem(sys.modules, name, None)  # import fiftyone... -> ImportError
    monkeypatch.delitem(sys.modules, "glaclip.integrations.fiftyone", raising=False)
    with pytest.raises(GlaclipError, match=r"pip install 'glaclip\[fiftyone\]'") as err:
        importlib.import_module("glaclip.integrations.fiftyone")
    assert "\n" not in str(err.value)


def test_bad_classes_fail_before_loading_models(fo):
    from glaclip.integrations.fiftyone import GlaclipModel

    with pytest.raises(GlaclipError, match="empty"):
        GlaclipModel("", clip_weights="/nonexistent.pt")
    with pytest.raises(GlaclipError, match="not both"):
        GlaclipModel("sky", segmenter=object(), method="sclip")


def test_apply_model_gives_the_label_maps_and_mask_targets(fo, model, dataset, photos):
    import fiftyone.core.models as fom

    from glaclip.integrations.fiftyone import set_mask_targets

    assert isinstance(model, fom.Model) and model.media_type == "image"
    pngs = [str(p) for p in photos if p.suffix == ".png"]  # lossless: FiftyOne's and glaclip's decoders agree
    dataset.add_samples([fo.Sample(filepath=p) for p in pngs])
    dataset.apply_model(model, label_field="glaclip", skip_failures=False)  # one image at a time: predict
    dataset.apply_model(model, label_field="batched", batch_size=2, skip_failures=False)  # predict_all
    assert set_mask_targets(dataset, CLASSES, "glaclip") == dict(enumerate(NAMES))
    set_mask_targets(dataset, model.classes)
    for sample in dataset.iter_samples():
        want = model.segmenter.predict(sample.filepath, CLASSES).labels
        for field in ("glaclip", "batched"):
            seg = sample[field]
            assert isinstance(seg, fo.Segmentation) and seg.mask.dtype == np.uint8
            np.testing.assert_array_equal(seg.mask, want)
    assert len(np.unique(np.concatenate([s.glaclip.mask.ravel() for s in dataset]))) >= 2
    again = fo.load_dataset(dataset.name)  # read back from the database
    assert again.mask_targets == {"glaclip": dict(enumerate(NAMES))}
    assert again.default_mask_targets == dict(enumerate(NAMES)) == model.mask_targets


def test_evaluate_segmentations_against_labels(fo, model, dataset, photos):
    pngs = [str(p) for p in photos if p.suffix == ".png"]
    dataset.add_samples([fo.Sample(filepath=p) for p in pngs])
    dataset.apply_model(model, label_field="glaclip", skip_failures=False)
    targets = model.mask_targets
    preds, gts = [], []
    for k, sample in enumerate(dataset.iter_samples(autosave=True)):
        pred = sample.glaclip.mask
        gt = pred.copy()
        gt[: pred.shape[0] // 2, : pred.shape[1] // 3] = (k + 1) % len(NAMES)  # some right, some wrong
        gt[-5:, -7:] = 0  # and some background
        sample["same"] = fo.Segmentation(mask=pred.copy())
        sample["gt"] = fo.Segmentation(mask=gt)
        preds.append(pred.ravel())
        gts.append(gt.ravel())
    same = dataset.evaluate_segmentations("glaclip", gt_field="same", eval_key="s", mask_targets=targets)
    assert same.metrics()["accuracy"] == 1.0
    res = dataset.evaluate_segmentations("glaclip", gt_field="gt", eval_key="e", mask_targets=targets)
    p, g = np.concatenate(preds).astype(int), np.concatenate(gts).astype(int)
    conf = np.bincount(g * len(NAMES) + p, minlength=len(NAMES) ** 2).reshape(len(NAMES), len(NAMES))
    np.testing.assert_array_equal(res.confusion_matrix(classes=NAMES), conf)  # rows: ground truth
    counted = (g != 0) | (p != 0)  # FiftyOne: value 0 is background, a pixel 0 in both counts neither way
    assert 0 < (g == p)[counted].mean() < 1
    assert res.metrics()["accuracy"] == pytest.approx((g == p)[counted].mean(), abs=1e-12)
    for sample, pr, gt in zip(dataset, preds, gts):
        c = (gt != 0) | (pr != 0)
        assert sample.e_accuracy == pytest.approx((gt == pr)[c].mean(), abs=1e-12)


def test_export_layout_links_images_and_resumes(tiny_files, photos, tmp_path):
    """No FiftyOne needed to write the export: the files, their names and values, the sources untouched."""
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos}
    out = tmp_path / "out"
    r = _run(tiny_files, str(tmp_path / "photos"), "-c", CLASSES, "-o", str(out), "--export", "fiftyone")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "fiftyone" / "classes.json").read_text()) == NAMES
    for it in collect([str(tmp_path / "photos")]):
        data = out / "fiftyone" / "data" / (it.rel + it.path.suffix)
        label = out / "fiftyone" / "labels" / (it.rel + ".png")
        assert os.path.samefile(data, it.path)  # a hard link, not a copy
        with Image.open(label) as im:
            assert im.mode == "L"
            values = np.array(im)
        with Image.open(out / (it.rel + "_labels.png")) as im:
            np.testing.assert_array_equal(values, np.array(im))  # the label map glaclip writes
    assert sorted(p.relative_to(out / "fiftyone").as_posix() for p in (out / "fiftyone").rglob("*") if p.is_file()) \
        == ["classes.json", "data/a.png", "data/c.jpg", "data/sub/b.png", "labels/a.png", "labels/c.png",
            "labels/sub/b.png"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos} == before
    # a rerun resumes (nothing rewritten); asking for COCO instead removes the FiftyOne files, never the images
    stamp = (out / "fiftyone" / "labels" / "a.png").stat().st_mtime_ns
    assert _run(tiny_files, str(tmp_path / "photos"), "-c", CLASSES, "-o", str(out), "--export", "fiftyone"
                ).returncode == 0
    assert (out / "fiftyone" / "labels" / "a.png").stat().st_mtime_ns == stamp
    r = _run(tiny_files, str(tmp_path / "photos"), "-c", CLASSES, "-o", str(out), "--export", "coco")
    assert r.returncode == 0, r.stderr
    assert not (out / "fiftyone").exists() and (out / "coco.json").is_file()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos} == before


def test_export_imports_into_fiftyone(fo, tiny_files, model, photos, tmp_path):
    out = tmp_path / "out"
    r = _run(tiny_files, str(tmp_path / "photos"), "-c", CLASSES, "-o", str(out), "--export", "fiftyone")
    assert r.returncode == 0, r.stderr
    # the README's lines
    ds = fo.Dataset.from_dir(dataset_dir=str(out / "fiftyone"), dataset_type=fo.types.ImageSegmentationDirectory,
                             label_field="glaclip")
    ds.mask_targets = {"glaclip": dict(enumerate(json.load(open(out / "fiftyone" / "classes.json"))))}
    try:
        assert len(ds) == 3 and ds.mask_targets["glaclip"] == model.mask_targets
        for sample in ds:
            rel = os.path.relpath(sample.filepath, out / "fiftyone" / "data")
            source = tmp_path / "photos" / rel
            assert os.path.samefile(sample.filepath, source)
            mask = sample.glaclip.get_mask()
            assert mask.dtype == np.uint8 and mask.ndim == 2
            if source.suffix == ".png":  # lossless: the model in this process sees the pixels the run saw
                np.testing.assert_array_equal(mask, model.segmenter.predict(source, CLASSES).labels)
        pngs = ds.match(fo.ViewField("filepath").ends_with(".png"))
        pngs.apply_model(model, label_field="applied", skip_failures=False)
        res = pngs.evaluate_segmentations("applied", gt_field="glaclip", mask_targets=model.mask_targets)
        assert res.metrics()["accuracy"] == 1.0  # both routes give the same masks
    finally:
        ds.delete()


def test_mask_image_keeps_the_values():
    labels = np.array([[0, 3], [255, 1]])
    assert np.array(mask_image(labels, 256)).tolist() == labels.tolist()
    wide = np.array([[0, 300], [65535, 7]])
    im = mask_image(wide, 1000)
    assert np.array(im).astype(int).tolist() == wide.tolist()


def test_sample_files_link_else_copy_and_never_write_the_source(tmp_path, monkeypatch):
    from glaclip.io import export
    from glaclip.io.files import is_temporary

    source = _img(tmp_path / "src" / "x.png", 4, (20, 30))
    before = source.read_bytes()
    labels = np.arange(600).reshape(20, 30) % 5
    paths = export.fiftyone_paths(tmp_path / "out", "sub/x", ".png")
    export.write_fiftyone_sample(paths, source, labels, 5)
    assert os.path.samefile(paths["fiftyone_image"], source)
    export.write_fiftyone_sample(paths, source, labels, 5)  # again: the link stays, no temporary is left
    assert os.path.samefile(paths["fiftyone_image"], source)
    assert not [p for p in (tmp_path / "out").rglob("*") if is_temporary(p)]

    def no_links(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(export.os, "link", no_links)
    paths = export.fiftyone_paths(tmp_path / "elsewhere", "x", ".png")
    export.write_fiftyone_sample(paths, source, labels, 5)  # a copy where the file system cannot link
    image = paths["fiftyone_image"]
    assert not os.path.samefile(image, source) and image.read_bytes() == before == source.read_bytes()
    assert np.array(Image.open(paths["fiftyone_labels"])).tolist() == labels.tolist()
