"""Segmentation.to_supervision(): real supervision Detections, drawn by supervision's own annotators."""

import sys

import numpy as np
import pytest
from conftest import structured_image

from glaclip import GlaclipError

CLASSES = ["sky", "road; street", "car; vehicle", "tree", "person"]


def test_to_supervision_without_the_package_names_the_extra(segmenter, monkeypatch):
    seg = segmenter.predict(structured_image(40, 50), CLASSES)
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision -> ImportError
    with pytest.raises(GlaclipError, match=r"glaclip\[supervision\]"):
        seg.to_supervision()


def test_detections_one_per_class_present(segmenter):
    sv = pytest.importorskip("supervision")
    seg = segmenter.predict(structured_image(120, 160, seed=1), CLASSES)
    det = seg.to_supervision()
    assert isinstance(det, sv.Detections)
    present = np.unique(seg.labels)
    assert len(present) >= 2 and len(det) == len(present)
    np.testing.assert_array_equal(det.class_id, present)
    assert det.data["class_name"].tolist() == [seg.classes[c] for c in present]
    for i, c in enumerate(present):
        mask = seg.labels == c
        np.testing.assert_array_equal(det.mask[i], mask)
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(det.xyxy[i], [xs.min(), ys.min(), xs.max(), ys.max()])  # inclusive corners
        assert det.confidence[i] == pytest.approx(seg.probs[c][mask].mean(), abs=1e-6)


def test_supervision_annotators_draw_the_detections(segmenter):
    sv = pytest.importorskip("supervision")
    rgb = structured_image(120, 160, seed=1)
    det = segmenter.predict(rgb, CLASSES).to_supervision()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    masked = sv.MaskAnnotator(opacity=0.5).annotate(bgr.copy(), det)
    assert masked.shape == bgr.shape
    changed = (masked != bgr).any(axis=2)
    assert changed.mean() > 0.9  # every class's mask is painted over the image
    labelled = sv.LabelAnnotator(text_position=sv.Position.CENTER_OF_MASS).annotate(masked.copy(), det)
    assert (labelled != masked).any()  # the class names are written
