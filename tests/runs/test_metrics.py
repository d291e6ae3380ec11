import numpy as np
import pytest

from glaclip.runs.datasets import reduce_zero_label
from glaclip.runs.metrics import (
    boundary_counts,
    boundary_iou_counts,
    boundary_width,
    confusion,
    mask_boundary,
    summarize,
    summarize_boundary,
    window_edges,
)
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


# Boundary IoU against a naive restatement: per pixel, in a mask and some pixel within chessboard
# distance d of it lies outside the mask or outside the image.
def _naive_boundary(mask, d):
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for yy in range(y - d, y + d + 1):
                for xx in range(x - d, x + d + 1):
                    if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                        out[y, x] = True
    return out


def _naive_counts(pred, label, num_classes, ignore, d):
    inter, union = [0] * num_classes, [0] * num_classes
    h, w = label.shape
    for c in range(num_classes):
        if c == ignore:
            continue
        gt = np.array([[label[y, x] == c for x in range(w)] for y in range(h)])
        pr = np.array([[pred[y, x] == c and label[y, x] != ignore for x in range(w)] for y in range(h)])
        gb, pb = _naive_boundary(gt, d), _naive_boundary(pr, d)
        for y in range(h):
            for x in range(w):
                inter[c] += int(gb[y, x] and pb[y, x])
                union[c] += int(gb[y, x] or pb[y, x])
    return inter, union


def test_boundary_width_is_two_percent_of_the_diagonal():
    assert boundary_width(3, 4) == 1 and boundary_width(30, 40) == 1 and boundary_width(300, 400) == 10
    assert boundary_width(120, 160, 0.05) == 10 and boundary_width(60, 80, 0.0625) == 6  # 6.25 -> 6 (half to even)


def test_mask_boundary_by_hand():
    mask = np.zeros((7, 8), bool)
    mask[1:6, 0:5] = True  # touches the left image border
    got = mask_boundary(mask, 0.05)  # diagonal 10.6 -> d = 1
    ring = mask.copy()
    ring[2:5, 1:4] = False  # the 3x3 core survives one erosion; column 0 is on the border
    np.testing.assert_array_equal(got, ring)
    assert not mask_boundary(np.zeros((4, 4), bool)).any()
    full = mask_boundary(np.ones((4, 4), bool))  # d = 1: the image border is the mask's edge
    assert full.sum() == 12 and not full[1:3, 1:3].any()
    assert mask_boundary(np.ones((4, 4), bool), 0.3).all()  # d = round(1.70) = 2


@pytest.mark.parametrize("seed", range(6))
def test_mask_boundary_matches_naive(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 30, size=2)
    mask = np.kron(rng.random((4, 5)) > 0.4, np.ones((h // 4 + 1, w // 5 + 1), bool))[:h, :w]
    ratio = float(rng.choice([0.02, 0.05, 0.1]))
    np.testing.assert_array_equal(mask_boundary(mask, ratio), _naive_boundary(mask, boundary_width(h, w, ratio)))


def test_boundary_iou_counts_with_ignore_by_hand():
    label = np.zeros((6, 6), int)
    label[:, 3:] = 1
    label[0, :] = 255  # ignored: its pixels are outside every class's mask, in both maps
    pred = label.copy()
    pred[0, :] = 1  # predictions on ignored pixels do not count
    pred[:, 3] = 0  # the predicted edge is one column right of the true one
    inter, union = boundary_iou_counts(pred, label, 2, ratio=0.1)  # d = round(0.85) = 1
    gt0, gt1 = _naive_boundary(label == 0, 1), _naive_boundary(label == 1, 1)
    pr0, pr1 = _naive_boundary((pred == 0) & (label != 255), 1), _naive_boundary((pred == 1) & (label != 255), 1)
    assert gt0[1:, 0].all() and gt0[1, :3].all() and not gt0[0].any()  # the ignore row is a boundary's edge
    assert inter.tolist() == [int((gt0 & pr0).sum()), int((gt1 & pr1).sum())]
    assert union.tolist() == [int((gt0 | pr0).sum()), int((gt1 | pr1).sum())]
    # by hand: class 0 true 12 boundary pixels, predicted 14, shared 9; class 1: 12, 10 (all of it), 7
    assert inter.tolist() == [9, 7] and union.tolist() == [17, 15]
    mean, per_class = summarize_boundary(inter, union)
    assert per_class == pytest.approx([100 * 9 / 17, 100 * 7 / 15]) and mean == pytest.approx(sum(per_class) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_iou_counts_match_naive(seed):
    rng = np.random.default_rng(seed)
    h, w, c = 14 + seed, 19, 4
    label = rng.integers(0, c, size=(4, 4)).repeat(5, 0).repeat(5, 1)[:h, :w]
    label[rng.random((h, w)) < 0.05] = 255
    label[2, 2] = 9  # out of range: no class's mask, not ignored (counts for predictions)
    pred = np.where(rng.random((h, w)) < 0.15, rng.integers(0, c + 1, size=(h, w)), label % 256)
    pred[pred == 255] = 0
    ratio = float(rng.choice([0.02, 0.1]))
    inter, union = boundary_iou_counts(pred, label, c, 255, ratio)
    n_inter, n_union = _naive_counts(pred, label, c, 255, boundary_width(h, w, ratio))
    assert inter.tolist() == n_inter and union.tolist() == n_union and union.sum() > 0


def test_boundary_iou_skips_a_class_equal_to_the_ignore_index():
    # 847-class ADE under mmseg's default ignore index 255 (the release's evaluator): class 255 never counts
    label = np.full((8, 8), 3)
    label[2:6, 2:6] = 255
    pred = np.full((8, 8), 255)
    inter, union = boundary_iou_counts(pred, label, 300, 255)
    assert inter.sum() == 0 and union[255] == 0 and union[3] > 0
    mean, per_class = summarize_boundary(inter, union)
    assert mean == 0.0 and per_class[255] is None and per_class[3] == 0.0
