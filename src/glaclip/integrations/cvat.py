"""CVAT (https://www.cvat.ai): an auto-annotation function module for cvat-sdk's detection interface.

    cvat-cli task auto-annotate TASK_ID --function-module glaclip.integrations.cvat \\
        -p classes=str:"sky, road; street, car"  [-p method=str:sclip -p device=str:cuda ...]
        [-p method=str:trident -p sam_weights=str:sam_vit_b_01ec64.pth]

`create(...)` (which cvat-cli calls with the `-p` parameters) loads a segmenter once; its `spec`
declares one mask label per class (id = class index, name = the class's display name, which CVAT
matches against the task's label names) and `detect` returns one mask shape per class present in
the image, encoded with cvat-sdk's own mask encoder. With `-p polygons=bool:true`, or when CVAT
asks for polygons (`--conv-mask-to-poly`), each connected part of a class becomes a polygon (its
outer contour, holes are not kept). A class whose mean probability over its mask
(`Segmentation.mean_probs`) is below CVAT's `--conf-threshold` is left out.
Needs the extra `glaclip[cvat]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config.classes import parse_classes
from ..config.protocols import effective
from ..config.registry import DEFAULT_METHOD, METHODS
from ..errors import GlaclipError, require
from ..io.export import mask_polygons
from ..runs.mask_source import route
from ..segmenter import Segmenter


class GlaclipFunction:
    """A cvat-sdk detection function (`spec`, `detect`) over a loaded segmenter."""

    def __init__(self, segmenter: Segmenter, classes: str, polygons: bool = False, prob_thd: float | None = None):
        self._cvataa = require("cvat_sdk.auto_annotation", "cvat")
        self._masks = require("cvat_sdk.masks", "cvat")
        self.segmenter = segmenter
        self.queries = parse_classes(classes)
        self.polygons = polygons
        self.prob_thd = prob_thd
        kind = "polygon" if polygons else "mask"
        self.spec = self._cvataa.DetectionFunctionSpec(
            labels=[self._cvataa.label_spec(name, i, type=kind) for i, name in enumerate(self.queries.names)])

    def detect(self, context: Any, image: Any) -> list:
        """One mask shape per class present in `image` (a PIL image), or its polygons (see the module)."""
        seg = self.segmenter.predict(image, self.queries, prob_thd=self.prob_thd)
        scores = seg.mean_probs()
        threshold = context.conf_threshold or 0.0
        as_polygons = self.polygons or context.conv_mask_to_poly
        shapes = []
        for c in np.unique(seg.labels).tolist():
            if scores[c] < threshold:
                continue
            mask = seg.labels == c
            if as_polygons:
                shapes += [self._cvataa.polygon(c, points) for points in mask_polygons(mask)]
            else:
                ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
                box = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]  # x1, y1, x2, y2 (exclusive)
                shapes.append(self._cvataa.mask(c, self._masks.encode_mask(mask, box)))
        return shapes


def flag(value: Any, name: str) -> bool:
    """A boolean parameter: a bool, or true/false, 1/0, yes/no in any case (cvat-cli's `str:` and `int:`
    give strings and numbers); anything else is an error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise GlaclipError(f"{name} must be true or false (or 1/0, yes/no), got {value!r}")


def create(classes: str, method: str | None = None, clip: str | None = None, clip_weights: str | None = None,
           vfm: str | None = None, vfm_weights: str | None = None, device: str = "auto", dtype: str = "auto",
           dataset: str | None = None, protocol: str | None = None, prob_thd: float | None = None,
           polygons: bool | str = False, sam: str | None = None, sam_weights: str | None = None) -> GlaclipFunction:
    """The function cvat-cli loads (`--function-module glaclip.integrations.cvat`, parameters with `-p`).

    classes: the class list in the class syntax ("sky, car; vehicle, road"); the other parameters
    as `Segmenter.from_pretrained` (None: its defaults; sam, sam_weights: Trident's SAM). polygons:
    return polygons instead of masks. Every parameter is checked here, before the models load; methods
    that read region masks are refused (CVAT gives none).
    """
    parse_classes(classes)  # a bad class list or a missing extra fails before the models load
    require("cvat_sdk.masks", "cvat")
    polygons = flag(polygons, "polygons")
    overrides = {} if prob_thd is None else {"prob_thd": prob_thd}
    preset, _ = effective(method or DEFAULT_METHOD, dataset, protocol, overrides)
    if preset.reads_masks:
        raise GlaclipError(f"method {preset.method} reads region masks, which CVAT cannot give it; choose a method "
                           "that reads none (glaclip methods)")
    if not METHODS[preset.method].needs_sam and (sam is not None or sam_weights is not None):
        raise GlaclipError(f"sam/sam_weights are Trident's SAM; method {preset.method} uses none")
    own_sam = route([preset], sam=sam, sam_weights=sam_weights).sam
    given = {"clip": clip, "clip_weights": clip_weights, "vfm": vfm, "vfm_weights": vfm_weights}
    seg = Segmenter.from_pretrained(preset=preset, device=device, dtype=dtype, progress=False, **own_sam,
                                    **{k: v for k, v in given.items() if v is not None})
    return GlaclipFunction(seg, classes, polygons=polygons,
                           prob_thd=None if prob_thd is None else preset.decision.prob_thd)
