"""supervision (https://supervision.roboflow.com): a `Segmentation` as `sv.Detections`.

    import supervision as sv
    det = seg.predict("street.png", "sky, road, car").to_supervision()
    canvas = sv.MaskAnnotator().annotate(image.copy(), det)
    canvas = sv.LabelAnnotator(text_position=sv.Position.CENTER_OF_MASS).annotate(canvas, det)

One detection per class present in the label map, in class order: its boolean mask, the box around
the mask (`sv.mask_to_xyxy`), class_id = the class index, confidence = the class's probability
averaged over its mask (`Segmentation.mean_probs`), data["class_name"] = the class name.
Needs the extra `glaclip[supervision]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import require

if TYPE_CHECKING:
    import supervision as sv

    from ..steps.decision import Segmentation


def to_detections(seg: "Segmentation") -> "sv.Detections":
    """One `sv.Detections` row per class present in `seg.labels` (see the module docstring)."""
    sv = require("supervision", "supervision")
    present = np.unique(seg.labels)
    masks = seg.labels[None] == present[:, None, None]  # N x H x W bool
    return sv.Detections(xyxy=sv.mask_to_xyxy(masks).astype(np.float32), mask=masks,
                         confidence=seg.mean_probs()[present].astype(np.float32), class_id=present.astype(int),
                         data={"class_name": np.array([seg.classes[c] for c in present])})
