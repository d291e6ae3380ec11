"""FiftyOne (https://docs.voxel51.com): glaclip as a FiftyOne image model.

    import fiftyone as fo
    from glaclip.integrations.fiftyone import GlaclipModel, set_mask_targets

    model = GlaclipModel("background, sky, road; street, car; vehicle", method="gla-proxyclip", prob_thd=0.3)
    dataset.apply_model(model, label_field="glaclip", batch_size=4)   # fo.Segmentation per sample
    set_mask_targets(dataset, model.classes, "glaclip")              # pixel value -> class name
    fo.launch_app(dataset)

`GlaclipModel` implements `fiftyone.core.models.Model`: media type "image", no transforms (FiftyOne
hands `predict` each image as an RGB uint8 array), `predict_all` segments a batch of images of any
sizes with their windows sharing backbone forwards (`Segmenter.predict_many`, same results as one
at a time). Each result is `fo.Segmentation(mask=labels)` whose pixel values are glaclip's label map
(class index; uint8 up to 256 classes, else uint16), as in the labels PNGs glaclip writes.
FiftyOne treats mask value 0 as background (the App leaves it uncoloured, evaluation counts pixels
that are 0 in both masks as neither right nor wrong), and glaclip gives pixels below `prob_thd`
class 0: list a background class first. Needs the extra `glaclip[fiftyone]`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Union

import numpy as np

from ..config.classes import ClassQueries, ClassSpec, parse_classes, read_class_file
from ..errors import GlaclipError, require
from ..io.export import mask_targets
from ..segmenter import Segmenter

fom = require("fiftyone.core.models", "fiftyone")
fol = require("fiftyone.core.labels", "fiftyone")

Classes = Union[ClassQueries, str, "os.PathLike[str]", Iterable[ClassSpec]]


def class_queries(classes: Classes) -> ClassQueries:
    """A class list in the class syntax ("sky, car; vehicle"), a class file (os.PathLike), names or
    synonym lists, or ClassQueries."""
    if isinstance(classes, ClassQueries):
        return classes
    if isinstance(classes, os.PathLike):
        return read_class_file(classes)
    return parse_classes(classes)


@dataclass
class GlaclipModelConfig:
    """What FiftyOne may read of a model's settings (`apply_model` looks for `confidence_thresh` and
    `filter_classes` here; a segmentation has neither)."""

    classes: list[str]
    prob_thd: float | None = None


class GlaclipModel(fom.Model):
    """A FiftyOne image model over a segmenter: `dataset.apply_model(model, label_field=...)`.

    classes: the class list (see `class_queries`). segmenter: a loaded `Segmenter`, or None to load
    one with `Segmenter.from_pretrained(**kwargs)` (method, clip, clip_weights, vfm, device, ...).
    prob_thd: the background threshold (default: the preset's).
    """

    def __init__(self, classes: Classes, segmenter: Segmenter | None = None, prob_thd: float | None = None,
                 **kwargs: Any):
        self.queries = class_queries(classes)  # a bad class list fails before the models load
        if segmenter is not None and kwargs:
            raise GlaclipError(f"give either a segmenter or Segmenter.from_pretrained arguments "
                               f"({', '.join(sorted(kwargs))}), not both")
        self.segmenter = segmenter if segmenter is not None else Segmenter.from_pretrained(**kwargs)
        self.config = GlaclipModelConfig(list(self.queries.names), prob_thd)
        self._preprocess = True

    @property
    def classes(self) -> list[str]:
        """The classes' display names, in index order (= mask value)."""
        return list(self.queries.names)

    @property
    def mask_targets(self) -> dict[int, str]:
        """{mask value: class name} for `dataset.mask_targets[label_field]`."""
        return mask_targets(self.queries.names)

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False  # no transforms: `predict_all` takes a list of images of any sizes

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def _label(self, labels: np.ndarray) -> "fol.Segmentation":
        return fol.Segmentation(mask=labels.astype(np.uint8 if len(self.queries) <= 256 else np.uint16))

    def predict(self, arg: Any) -> "fol.Segmentation":
        """One image (RGB uint8 H x W x 3 array, or anything `Segmenter.predict` takes) -> its label map."""
        return self._label(self.segmenter.predict(arg, self.queries, prob_thd=self.config.prob_thd).labels)

    def predict_all(self, args: Iterable[Any]) -> list["fol.Segmentation"]:
        """A list of images (or an N x H x W x 3 array) -> their label maps, backbone forwards shared."""
        images = list(args)
        return [self._label(s.labels) for s in self.segmenter.predict_many(images, self.queries,
                                                                             prob_thd=self.config.prob_thd)]


def set_mask_targets(dataset: Any, classes: Classes, label_field: str | None = None) -> dict[int, str]:
    """Name the mask values of `label_field` on `dataset` (None: the dataset's default mask targets)
    after the class list, in index order (value i -> the display name of class i); saves the dataset
    and returns the targets."""
    targets = mask_targets(class_queries(classes).names)
    if label_field is None:
        dataset.default_mask_targets = targets
    else:
        dataset.mask_targets = {**dataset.mask_targets, label_field: targets}
    dataset.save()
    return targets
