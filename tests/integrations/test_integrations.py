"""What every integration reports (Segmentation.mean_probs) and the Hugging Face pipeline shape."""

import sys

import numpy as np
import pytest
from conftest import structured_image
from PIL import Image

import glaclip
import glaclip.steps.decision as decision_module
from glaclip import GlaclipError
from glaclip.integrations.pipeline import SegmentationPipeline

CLASSES = ["sky", "road; street", "car; vehicle", "tree", "person"]


def naive_means(seg):
    """Each class's probability over the pixels labelled with it, by the plain formula."""
    return np.array([seg.probs[c][seg.labels == c].astype(np.float64).mean() if (seg.labels == c).any() else np.nan
                     for c in range(len(seg.classes))])


def test_mean_probs_is_the_mean_over_each_class_mask(segmenter):
    seg = segmenter.predict(structured_image(120, 160, seed=1), CLASSES)
    assert len(np.unique(seg.labels)) >= 2  # the test means something only with several classes present
    np.testing.assert_allclose(seg.mean_probs(), naive_means(seg), rtol=0, atol=1e-12, equal_nan=True)


def test_mean_probs_of_a_lazy_result_reads_bands_and_equals_the_eager_one(segmenter, monkeypatch):
    rgb = structured_image(150, 130, seed=2)
    eager = segmenter.predict(rgb, CLASSES)
    monkeypatch.setattr(decision_module, "_BAND_BYTES", 4 * 20 * 130 * 9)  # a few rows a band
    lazy = segmenter.predict(rgb, CLASSES)
    assert lazy._probs is None and len(lazy._bands) > 3
    means = lazy.mean_probs()
    assert lazy._probs is None  # band by band: the whole C x H x W array was never built
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    np.testing.assert_allclose(means, eager.mean_probs(), rtol=0, atol=1e-6, equal_nan=True)
    bands = list(lazy.prob_bands())
    assert [b[:2] for b in bands] == lazy._bands and lazy._probs is None
    np.testing.assert_array_equal(np.concatenate([b[2] for b in bands], axis=1), lazy.probs)
    np.testing.assert_allclose(means, naive_means(lazy), rtol=0, atol=1e-12, equal_nan=True)


def check_entries(entries, seg):
    present = np.unique(seg.labels).tolist()
    assert [e["label"] for e in entries] == [seg.classes[c] for c in present]
    expected = naive_means(seg)
    covered = np.zeros(seg.labels.shape, dtype=int)
    for e, c in zip(entries, present):
        assert list(e) == ["score", "label", "mask"]  # transformers' key order
        assert isinstance(e["score"], float) and e["score"] == pytest.approx(expected[c], abs=1e-12)
        assert e["mask"].mode == "L" and e["mask"].size == (seg.labels.shape[1], seg.labels.shape[0])
        m = np.asarray(e["mask"])
        assert set(np.unique(m).tolist()) <= {0, 255}
        np.testing.assert_array_equal(m == 255, seg.labels == c)
        covered += m == 255
    assert (covered == 1).all()  # the masks tile the image


def test_pipeline_shape(segmenter):
    rgb = structured_image(90, 140, seed=4)
    pipe = SegmentationPipeline(segmenter)
    out = pipe(Image.fromarray(rgb), candidate_labels=CLASSES)
    check_entries(out, segmenter.predict(rgb, CLASSES))
    assert [e["label"] for e in pipe(rgb, candidate_labels="sky, road; street, car; vehicle, tree, person")] == \
        [e["label"] for e in out]  # the one class syntax


def test_pipeline_list_of_images_and_threshold(segmenter):
    images = [structured_image(90, 140, seed=4), structured_image(70, 60, seed=5)]
    pipe = SegmentationPipeline(segmenter)
    batch = pipe(images, candidate_labels=CLASSES)
    assert len(batch) == 2
    for entries, rgb in zip(batch, images):
        check_entries(entries, segmenter.predict(rgb, CLASSES))
    high = pipe(images[0], candidate_labels=CLASSES, prob_thd=0.99)
    check_entries(high, segmenter.predict(images[0], CLASSES, prob_thd=0.99))
    with pytest.raises(GlaclipError, match="mask maps"):
        pipe(images, candidate_labels=CLASSES, masks=[None])
    with pytest.raises(GlaclipError, match="empty"):
        pipe(images[0], candidate_labels="")


def test_glaclip_pipeline_loads_through_from_pretrained(tiny_files):
    pipe = glaclip.pipeline(method="clip", device="cpu", dtype="fp32", **tiny_files)
    assert pipe.segmenter.preset.method == "clip" and pipe.segmenter.vfm is None
    out = pipe(structured_image(64, 64), candidate_labels=["a", "b"])
    assert {e["label"] for e in out} <= {"a", "b"}
    with pytest.raises(GlaclipError):
        glaclip.pipeline(method="no-such-method", device="cpu", **tiny_files)


def test_cvat_module_without_cvat_sdk_names_the_extra(monkeypatch):
    from glaclip.integrations import cvat

    monkeypatch.setitem(sys.modules, "cvat_sdk.masks", None)  # import cvat_sdk.masks -> ImportError
    monkeypatch.setattr(cvat.Segmenter, "from_pretrained", None)  # and no model is loaded before saying so
    with pytest.raises(GlaclipError, match=r"glaclip\[cvat\]"):
        cvat.create("sky, road")


def test_pipeline_passes_region_masks_to_mask_methods(files6):
    """A mask method through the pipeline: one map per image, the same result as predict(masks=)."""
    from glaclip import Segmenter

    seg = Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp32", **files6)
    images = [structured_image(60, 80, seed=7), structured_image(50, 70, seed=8)]
    maps = [np.arange(60 * 80).reshape(60, 80) // 800, (np.arange(50 * 70).reshape(50, 70) // 500)[::-1].copy()]
    pipe = SegmentationPipeline(seg)
    check_entries(pipe(images[0], candidate_labels=CLASSES, masks=maps[0]),
                  seg.predict(images[0], CLASSES, masks=maps[0]))
    for entries, rgb, m in zip(pipe(images, candidate_labels=CLASSES, masks=maps), images, maps):
        check_entries(entries, seg.predict(rgb, CLASSES, masks=m))
    with pytest.raises(GlaclipError, match="mask"):
        pipe(images[0], candidate_labels=CLASSES)  # a mask method without masks: the segmenter's one line
