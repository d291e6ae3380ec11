"""The Hugging Face image-segmentation pipeline shape over a `Segmenter`.

    import glaclip
    segment = glaclip.pipeline(method="gla-proxyclip")          # any Segmenter.from_pretrained argument
    for item in segment("street.png", candidate_labels=["sky", "road", "car; vehicle"]):
        item["label"], item["score"], item["mask"]                  # str, float, PIL image mode "L" (0/255)

Like transformers' semantic image-segmentation pipelines: one entry per class present in the label
map, in class order, each mask at the image's size; a list of images gives a list of such lists.
The score (None in transformers' semantic pipelines) is the class's probability averaged over its
mask (`Segmentation.mean_probs`). No extra needed.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..config.classes import ClassQueries, ClassSpec, parse_classes
from ..errors import GlaclipError
from ..io.images import load_image
from ..io.masks import load_masks
from ..segmenter import Segmenter
from ..steps.decision import Segmentation
from ..steps.encoding import ImageEncoding


class SegmentationPipeline:
    """`(image, candidate_labels=[...], masks=None) -> [{"score", "label", "mask"}, ...]` over a segmenter."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter

    def __call__(self, image: Any, candidate_labels: Iterable[ClassSpec] | str, masks: Any = None,
                 prob_thd: float | None = None) -> list[dict] | list[list[dict]]:
        """image: what `Segmenter.predict` takes (path, PIL image, array, tensor, encoding), or a list
        of them. candidate_labels: class names in the class syntax (`glaclip.parse_classes`).
        masks: the image's region-id map, or a mask file (.npz/.png, as `--masks FILE`), for methods
        that read region masks (a list for a list).
        prob_thd: the background threshold (default: the preset's)."""
        queries = candidate_labels if isinstance(candidate_labels, ClassQueries) else parse_classes(candidate_labels)
        if not isinstance(image, list):
            if isinstance(masks, (str, os.PathLike)):
                image, masks = _with_mask_file(image, masks)
            extra = {} if masks is None else {"masks": masks}
            return entries(self.segmenter.predict(image, queries, prob_thd=prob_thd, **extra))
        if masks is None and not any(isinstance(im, ImageEncoding) for im in image):
            return [entries(s) for s in self.segmenter.predict_many(image, queries, prob_thd=prob_thd)]
        if isinstance(masks, (str, os.PathLike)):
            raise GlaclipError(f"masks={masks!s} is one mask file for {len(image)} images; give a list, one per image")
        masks = [None] * len(image) if masks is None else list(masks)
        if len(masks) != len(image):
            raise GlaclipError(f"got {len(masks)} mask maps for {len(image)} images")
        return [self(im, queries, m, prob_thd) for im, m in zip(image, masks)]


def _with_mask_file(image: Any, path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """(the image, read; its region map from a mask file as `--masks FILE` reads it, at its size)."""
    if isinstance(image, ImageEncoding):
        return image, load_masks(path, image.size)
    rgb = load_image(image)
    return rgb, load_masks(path, rgb.shape[:2])


def entries(seg: Segmentation) -> list[dict]:
    """A result in the pipeline shape: one {"score", "label", "mask"} per class present, in class order."""
    scores = seg.mean_probs()
    return [{"score": float(scores[c]), "label": seg.classes[c],
             "mask": Image.fromarray(np.where(seg.labels == c, 255, 0).astype(np.uint8))}
            for c in np.unique(seg.labels).tolist()]


def pipeline(method: str | None = None, **kwargs: Any) -> SegmentationPipeline:
    """A callable in the Hugging Face image-segmentation shape; arguments as `Segmenter.from_pretrained`."""
    return SegmentationPipeline(Segmenter.from_pretrained(method=method, **kwargs))
