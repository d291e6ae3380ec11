import numpy as np
import pytest

from glaclip.runs.datasets import reduce_zero_label
from glaclip.runs.metrics import boundary_counts, confusion, summarize, window_edges
from glaclip.steps.windows import window_grid


def test_hand_computed_iou():
    # 3 classes; class 2 never appears in ground truth nor prediction -> NaN, left out of the mean
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    cm = confusion(pred, label, 3)
    assert cm[:3].tolist() == [[3, 1, 0], [1, 2, 0], [0, 0, 0]] and cm[3].tolist() == [0, 0, 0]
    m = summarize(cm, ["a", "b", "c"])
    iou_a, iou_b = 3 / (4 + 4 - 3), 2 / (3 + 3 - 2)
    assert m["mIoU"] == pytest.approx(100 * (iou_a + iou_b) / 2)
    assert m["aAcc"] == pytest.approx(100 * 5 / 7)
    assert m["mAcc"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert m["per_class"][2]["IoU"] is None and m["per_class"][2]["Acc"] is None


def test_predicted_but_absent_class_counts_with_iou_zero():
    label = np.array([[0, 0]])
    pred = np.array([[0, 1]])
    m = summarize(confusion(pred, label, 2), ["a", "b"])
    assert m["per_class"][1]["IoU"] == 0.0 and m["per_class"][1]["Acc"] is None
    assert m["mIoU"] == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_out_of_range_labels_count_only_as_predictions():
    # like mmseg's histograms: label 7 (not ignore, not a class) adds to area_pred only
    label = np.array([[0, 7]])
    pred = np.array([[0, 0]])
    m = summarize(confusion(pred, label, 2), ["a", "b"])
    assert m["per_class"][0]["IoU"] == pytest.approx(50.0)  # union = pred 2 + label 1 - inter 1


def test_reduce_zero_label_like_mmseg():
    label = np.array([[0, 1, 2, 255, 150]])
    assert reduce_zero_label(label).tolist() == [[255, 0, 1, 255, 149]]


def test_window_edges_and_ber():
    grid = window_grid(224, 336, 224, 112, 56)  # two windows side by side: x in [0,224) and [112,336)
    rows, cols = window_edges(grid, 224, 336)  # original size == resized size
    assert not rows.any()
    assert cols[:, 112].all() and cols[:, 224].all() and cols.sum() == 2 * 224
    label = np.zeros((224, 336), int)
    label[:, 224:] = 1  # a true boundary at x=224: those pairs differ in ground truth and are not counted
    label[0, :] = 255
    pred = label.copy()
    pred[:100, 112:] = 3  # a seam at x=112 on rows 0..99, of which row 0 is ignored
    diff, counted = boundary_counts(pred, label, (rows, cols))
    assert counted == 223  # the x=112 edge, rows 1..223
    assert diff == 99


def test_window_edges_scale_to_original_size():
    grid = window_grid(336, 448, 224, 112, 56)  # a 300x400 image resized to 336x448
    rows, cols = window_edges(grid, 300, 400)
    assert set(np.flatnonzero(rows.any(1))) == {round(112 * 300 / 336), round(224 * 300 / 336)}
    assert set(np.flatnonzero(cols.any(0))) == {round(e * 400 / 448) for e in (112, 224, 336)}
