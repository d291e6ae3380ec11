"""glaclip's Boundary IoU counts against CorrCLIPv2's evaluator on random label maps.

Runs the release's own `mask_to_boundary` and `BoundaryIoUMetric._boundary_intersect_and_union`
(CorrCLIPv2/myutils.py), taken from a checkout by their names without importing the file (it imports
mmseg and mmengine), and `glaclip.runs.metrics.boundary_iou_counts` on the same random maps: classes
from 5 to 300 (class 255 included), ignore index 255 or 65535, out-of-range labels. Prints the number
of cases whose per-class intersections and unions are identical, and exits 1 on the first that is not.

    python benchmarks/biou_release.py --release /path/to/CorrCLIP/CorrCLIPv2 [--cases 300]
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import torch

from glaclip.runs.metrics import boundary_iou_counts


def release_counts(folder: Path):
    """The release's per-image counting function, with mask_to_boundary beside it."""
    tree = ast.parse((folder / "myutils.py").read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "mask_to_boundary"]
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "BoundaryIoUMetric":
            wanted += [f for f in cls.body if isinstance(f, ast.FunctionDef)
                       and f.name == "_boundary_intersect_and_union"]
    if len(wanted) != 2:
        sys.exit(f"{folder / 'myutils.py'} holds no mask_to_boundary / BoundaryIoUMetric._boundary_intersect_and_union")
    space = {"np": np, "torch": torch, "cv2": cv2}
    exec(compile(ast.Module(wanted, []), str(folder / "myutils.py"), "exec"), space)
    metric = types.SimpleNamespace(boundary_dilation_ratio=0.02)
    fn = space["_boundary_intersect_and_union"]
    return lambda pred, label, c, ignore: fn(metric, torch.from_numpy(pred), torch.from_numpy(label), c, ignore)


def random_case(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    h, w = (int(v) for v in rng.integers(20, 300, size=2))
    c = int(rng.choice([5, 30, 300]))
    bh, bw = (int(v) for v in rng.integers(2, 12, size=2))
    label = np.kron(rng.integers(0, c, (bh, bw)), np.ones((h // bh + 1, w // bw + 1), int))[:h, :w]
    other = np.kron(rng.integers(0, c, (bh + 1, bw + 2)), np.ones((h // (bh + 1) + 1, w // (bw + 2) + 1), int))
    pred = np.where(rng.random((h, w)) < 0.7, label, other[:h, :w])
    ignore = int(rng.choice([255, 65535]))
    label[rng.random((h, w)) < 0.03] = ignore
    label[:, rng.integers(0, w)] = ignore
    if c > 255 and trial % 2:
        label[:5, :5] = 255  # a class when the ignore index is 65535, ignored when it is 255
    if trial % 3 == 0:
        label[-3:] = 70000 if ignore == 65535 else 400  # neither a class nor the ignore index
    return pred, label, c, ignore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", required=True, help="the release's CorrCLIPv2 folder (zdk258/CorrCLIP)")
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    theirs = release_counts(Path(a.release))
    rng = np.random.default_rng(a.seed)
    for trial in range(a.cases):
        pred, label, c, ignore = random_case(rng, trial)
        ri, ru = (t.numpy().astype(np.int64) for t in theirs(pred, label, c, ignore))
        gi, gu = boundary_iou_counts(pred, label, c, ignore)
        if not (np.array_equal(ri, gi) and np.array_equal(ru, gu)):
            sys.exit(f"case {trial} differs: classes {np.flatnonzero((ri != gi) | (ru != gu)).tolist()[:10]}")
    print(f"Boundary IoU counts identical to the release's in {a.cases} random cases")


if __name__ == "__main__":
    main()
