"""Segmentation metrics: mmseg's IoUMetric on a data-set confusion matrix, and the Boundary Error Rate.

The confusion matrix has one extra row for ground-truth values that are neither a class nor the
ignore index: mmseg's histograms still count the prediction at such pixels (area_pred) but no label.
"""

from __future__ import annotations

from typing import Iterable

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
