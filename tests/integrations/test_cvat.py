"""The CVAT function module, loaded by cvat-cli's own loader and checked by cvat-sdk's own validation
of detection output (the mapping `annotate_task` and the agent apply before uploading); no server."""

import copy
import logging

import cv2
import numpy as np
import pytest
from conftest import structured_image
from PIL import Image

from glaclip import GlaclipError
from glaclip.io.export import mask_polygons

cvataa = pytest.importorskip("cvat_sdk.auto_annotation")
driver = pytest.importorskip("cvat_sdk.auto_annotation.driver")
cli_common = pytest.importorskip("cvat_cli._internal.common")
cli_parsers = pytest.importorskip("cvat_cli._internal.parsers")
from cvat_sdk import models  # noqa: E402

CLASSES = "sky, road; street, car; vehicle, tree, person"
NAMES = ["sky", "road", "car", "tree", "person"]


def decode_mask(points, width, height):
    """CVAT's mask points: run lengths (zeros first) over the box's pixels row by row, then the box's
    inclusive corners x1, y1, x2, y2."""
    *runs, x1, y1, x2, y2 = (int(p) for p in points)
    box = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(y2 - y1 + 1, x2 - x1 + 1)
    out = np.zeros((height, width), bool)
    out[y1 : y2 + 1, x1 : x2 + 1] = box
    return out


def load(tiny_files, *params):
    """The function as `cvat-cli task auto-annotate --function-module glaclip.integrations.cvat -p ...` loads it."""
    args = [f"classes=str:{CLASSES}", "device=str:cpu", "dtype=str:fp32", *params]
    args += [f"{k}=str:{v}" for k, v in tiny_files.items()]
    parameters = dict(cli_parsers.parse_function_parameter(a) for a in args)
    return cli_common.FunctionLoader("glaclip.integrations.cvat", None, parameters).load()


@pytest.fixture(scope="module")
def function(tiny_files):
    return load(tiny_files)


def task_labels(kind="any"):
    """A task's labels as the server lists them, with other ids than the function's."""
    return [models.Label(name, id=100 + i, type=kind, attributes=[], sublabels=[]) for i, name in enumerate(NAMES)]


def validate(function, shapes, conv_mask_to_poly=False, kind="any"):
    mapper = driver._AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels(kind),
                                      allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)
    mapped = copy.deepcopy(shapes)  # remapped in place
    result = mapper.validate_and_remap(mapped, 7)  # cvat-sdk >= 2.27 also returns (tags, shapes)
    mapped = mapped if result is None else result[1]
    assert len(mapped) == len(shapes)
    return mapped


def context(**kw):
    return driver._DetectionFunctionContextImpl(frame_name="frame.png", **kw)


def test_spec_declares_a_mask_label_per_class(function):
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    labels = function.spec.labels
    assert [(lab.name, lab.id, lab.type) for lab in labels] == [(n, i, "mask") for i, n in enumerate(NAMES)]


def test_detect_returns_valid_masks_that_decode_to_the_label_map(function):
    rgb = structured_image(96, 128, seed=3)
    shapes = function.detect(context(), Image.fromarray(rgb))
    seg = function.segmenter.predict(rgb, CLASSES)
    present = np.unique(seg.labels).tolist()
    assert len(present) >= 2 and [s.label_id for s in shapes] == present
    decoded = [decode_mask(s.points, 128, 96) for s in shapes]
    for c, m in zip(present, decoded):
        np.testing.assert_array_equal(m, seg.labels == c)
    mapped = validate(function, shapes)  # cvat-sdk's own checks, then ids remapped to the task's
    assert [s.label_id for s in mapped] == [100 + c for c in present] and {s.frame for s in mapped} == {7}
    with pytest.raises(cvataa.BadFunctionError):  # the same checks refuse masks when CVAT asked for polygons
        validate(function, function.detect(context(), Image.fromarray(rgb)), conv_mask_to_poly=True)


def test_confidence_threshold_leaves_out_low_classes(function):
    rgb = structured_image(96, 128, seed=3)
    scores = function.segmenter.predict(rgb, CLASSES).mean_probs()
    present = [c for c in range(len(NAMES)) if not np.isnan(scores[c])]
    cut = float(np.median(scores[present]))
    kept = [s.label_id for s in function.detect(context(conf_threshold=cut), Image.fromarray(rgb))]
    assert kept == [c for c in present if scores[c] >= cut] and 0 < len(kept) < len(present)


def test_polygons_when_cvat_asks_and_when_the_function_is_told(function, tiny_files):
    rgb = structured_image(96, 128, seed=3)
    seg = function.segmenter.predict(rgb, CLASSES)
    shapes = function.detect(context(conv_mask_to_poly=True), Image.fromarray(rgb))
    validate(function, shapes, conv_mask_to_poly=True)
    assert {s.type.value for s in shapes} == {"polygon"}
    present = np.unique(seg.labels).tolist()
    assert sorted({s.label_id for s in shapes}) == [c for c in present if mask_polygons(seg.labels == c)]
    covered = np.zeros(seg.labels.shape, bool)
    for c in present:
        filled = np.zeros(seg.labels.shape, np.uint8)
        cv2.fillPoly(filled, [np.array(s.points).reshape(-1, 2).astype(np.int32) for s in shapes if s.label_id == c],
                     1)
        mask = seg.labels == c
        covered |= mask & (filled == 1)
        assert filled.sum() == 0 or mask[filled == 1].mean() > 0.9  # a class's polygons hold little else
    assert covered.mean() > 0.99  # every pixel but those of tiny parts lies in a polygon of its class
    told = load(tiny_files, "polygons=bool:true")
    assert {lab.type for lab in told.spec.labels} == {"polygon"}
    validate(told, told.detect(context(), Image.fromarray(rgb)))


@pytest.mark.parametrize("shape", ["rectangle", "disk", "two parts"])
def test_polygons_fill_back_to_the_mask(shape):
    yy, xx = np.mgrid[0:60, 0:80]
    mask = {"rectangle": (yy >= 10) & (yy < 40) & (xx >= 5) & (xx < 70),
            "disk": (yy - 30) ** 2 + (xx - 40) ** 2 <= 20**2,
            "two parts": ((yy - 15) ** 2 + (xx - 15) ** 2 <= 100) | ((yy >= 35) & (xx >= 50))}[shape]
    polys = mask_polygons(mask)
    assert len(polys) == (2 if shape == "two parts" else 1)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [np.array(p).reshape(-1, 2).astype(np.int32) for p in polys], 1)
    np.testing.assert_array_equal(filled.astype(bool), mask)


def test_bad_classes_fail_before_loading_models(tiny_files):
    with pytest.raises(GlaclipError, match="empty"):
        load({"clip_weights": "/nonexistent.pt"}, "classes=str:")
