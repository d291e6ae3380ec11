"""Segmentation metrics: mmseg's IoUMetric on a data-set confusion matrix, the Boundary IoU of the
CorrCLIPv2 release's evaluator, and the Boundary Error Rate along window edges.

The confusion matrix has one extra row for ground-truth values that are neither a class nor the
ignore index: mmseg's histograms still count the prediction at such pixels (area_pred) but no label.

Boundary IoU (Cheng et al., CVPR 2021; per class over the data set, as CorrCLIPv2's BoundaryIoUMetric):
in each image, for each class present in the valid ground truth or in the prediction at valid pixels,
the inner boundary of the ground-truth mask and of the predicted mask (prediction cleared where the
ground truth is the ignore index); the class's intersection and union of the two boundaries are summed
over the data set, and its Boundary IoU is their ratio (NaN, left out of the mean, when the union is 0).
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from ..steps.windows import WindowGrid


def confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(C + 1) x C counts: rows ground truth (last row: out-of-range labels), columns prediction."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in size")
    keep = label != ignore_index
    gt = label[keep].astype(np.int64)
    pr = pred[keep].astype(np.int64)
    gt = np.where((gt >= 0) & (gt < num_classes), gt, num_classes)
    flat = np.bincount(gt * num_classes + pr, minlength=(num_classes + 1) * num_classes)
    return flat.reshape(num_classes + 1, num_classes)


def summarize(cm: np.ndarray, class_names: Iterable[str]) -> dict:
    """mIoU / aAcc / mAcc as mmseg's IoUMetric computes them (in %), with per-class IoU and Acc.

    Classes whose union (IoU) or ground-truth area (Acc) is empty are NaN and left out of the means.
    """
    names = list(class_names)
    c = cm.shape[1]
    intersect = np.diag(cm[:c]).astype(np.float64)
    area_pred = cm.sum(0).astype(np.float64)
    area_label = cm[:c].sum(1).astype(np.float64)
    union = area_pred + area_label - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
        aacc = intersect.sum() / area_label.sum()
    valid = ~np.isnan(iou)
    return {
        "mIoU": float(np.nanmean(iou) * 100) if valid.any() else float("nan"),
        "aAcc": float(aacc * 100),
        "mAcc": float(np.nanmean(acc) * 100) if (~np.isnan(acc)).any() else float("nan"),
        "per_class": [
            {"class": n, "IoU": _pct(i), "Acc": _pct(a), "gt_pixels": int(g), "pred_pixels": int(p)}
            for n, i, a, g, p in zip(names, iou, acc, area_label, area_pred)
        ],
    }


def _pct(x: float) -> float | None:
    return None if np.isnan(x) else float(x * 100)


BOUNDARY_DILATION = 0.02  # the release's boundary_dilation_ratio: the band's width as a share of the diagonal
_KERNEL = np.ones((3, 3), dtype=np.uint8)


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_DILATION) -> int:
    """d = max(1, round(ratio * image diagonal)), Python's round (half to even)."""
    return max(1, int(round(ratio * float(np.sqrt(height * height + width * width)))))


def mask_boundary(mask: np.ndarray, ratio: float = BOUNDARY_DILATION) -> np.ndarray:
    """The pixels of a binary mask within `boundary_width` pixels (chessboard distance) of a pixel outside
    it, outside the image counting as outside the mask: the mask minus its erosion by a 3x3 square
    repeated d times on the mask padded with one row/column of zeros (cv2). Boolean, the mask's shape.

    Only the mask's bounding box is eroded: outside it the mask is empty, so the result is the same."""
    mask = np.asarray(mask) != 0
    h, w = mask.shape
    out = np.zeros((h, w), dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = mask[y0:y1, x0:x1]
    padded = cv2.copyMakeBorder(box.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inner = cv2.erode(padded, _KERNEL, iterations=boundary_width(h, w, ratio))[1:-1, 1:-1]
    out[y0:y1, x0:x1] = box & (inner == 0)
    return out


def boundary_iou_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255,
                        ratio: float = BOUNDARY_DILATION) -> tuple[np.ndarray, np.ndarray]:
    """One image's per-class boundary (intersection, union) pixel counts, each a length-C int64 array.

    Classes: the values 0..C-1 other than the ignore index found in the valid ground truth or in the
    prediction at valid pixels (other classes add 0 to both)."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in size")
    valid = label != ignore_index
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    present = np.union1d(np.unique(label[valid]), np.unique(pred[valid]))
    for c in present[(present >= 0) & (present < num_classes) & (present != ignore_index)].tolist():
        gt = mask_boundary(label == c, ratio)
        pr = mask_boundary((pred == c) & valid, ratio)
        inter[c] = np.count_nonzero(gt & pr)
        union[c] = np.count_nonzero(gt | pr)
    return inter, union


def summarize_boundary(inter: np.ndarray, union: np.ndarray) -> tuple[float, list[float | None]]:
    """(mBoundaryIoU in %, per-class Boundary IoU in % or None where the union is empty)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        biou = np.asarray(inter, dtype=np.float64) / np.asarray(union, dtype=np.float64)
    mean = float(np.nanmean(biou) * 100) if (~np.isnan(biou)).any() else float("nan")
    return mean, [_pct(b) for b in biou]


def window_edges(grid: WindowGrid, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel pairs straddling a window edge inside the image, at the original resolution.

    Returns (rows, cols) boolean maps: rows[y, x] marks the pair (y-1, x)-(y, x) across a horizontal
    edge, cols[y, x] the pair (y, x-1)-(y, x) across a vertical edge (row/column 0 is never set).
    Edges are found in the resized image the windows live in and scaled to the original size.
    """
    sy, sx = height / grid.height, width / grid.width
    rows = np.zeros((height, width), dtype=bool)
    cols = np.zeros((height, width), dtype=bool)
    for y1, y2, x1, x2 in grid.boxes:
        ox1, ox2 = round(x1 * sx), round(x2 * sx)
        oy1, oy2 = round(y1 * sy), round(y2 * sy)
        for edge, inside in ((y1, 0 < y1), (y2, y2 < grid.height)):
            e = round(edge * sy)
            if inside and 0 < e < height:
                rows[e, ox1:ox2] = True
        for edge, inside in ((x1, 0 < x1), (x2, x2 < grid.width)):
            e = round(edge * sx)
            if inside and 0 < e < width:
                cols[oy1:oy2, e] = True
    return rows, cols


def boundary_counts(pred: np.ndarray, label: np.ndarray, edges: tuple[np.ndarray, np.ndarray],
                    ignore_index: int = 255) -> tuple[int, int]:
    """(pairs with different predictions, pairs counted): pairs across window edges whose two pixels
    share the same valid ground truth."""
    rows, cols = edges
    diff = counted = 0
    for mask, a, b, pa, pb in (
        (rows[1:], label[:-1], label[1:], pred[:-1], pred[1:]),
        (cols[:, 1:], label[:, :-1], label[:, 1:], pred[:, :-1], pred[:, 1:]),
    ):
        same = mask & (a == b) & (a != ignore_index)
        counted += int(same.sum())
        diff += int((same & (pa != pb)).sum())
    return diff, counted
