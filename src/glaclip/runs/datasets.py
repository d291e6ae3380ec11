"""Benchmark data sets read from disk, in the layouts the community's mmseg preparation produces, plus
plain folders (names and layouts: `config.datasets`; the settings a method runs with on each: protocols).

Images are found as `glaclip segment` finds them (`collection.walk_files`: symlinked folders followed,
hidden files and macOS `._*` companions skipped); where the image folder holds more than the benchmark
(PASCAL-Context 459 in VOC2010/JPEGImages), the label maps name the samples. Labels are read as mmseg
reads them (palette PNGs give their indices, 16-bit TIFFs their values) and, for `reduce_zero_label`
data sets, mapped as mmseg maps them: 0 -> ignore, k -> k-1, 255 stays ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config.classes import ClassQueries, read_class_file
from ..config.datasets import ALIASES, FOLDER, IGNORE_INDEX, SPECS, DatasetSpec, dataset_names, packaged_classes
from ..errors import GlaclipError
from .collection import walk_files


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


@dataclass
class SegDataset:
    spec: DatasetSpec
    root: Path
    samples: list[Sample]
    classes: ClassQueries
    ignore_index: int = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.samples)

    def image_relative(self, sample: Sample) -> Path:
        """The sample's image path relative to the data set's image folder (how its region-mask file
        is looked up: `mask_lookup.mask_file_for`)."""
        folder = self.root / self.spec.img_dir
        return sample.image.relative_to(folder) if sample.image.is_relative_to(folder) else Path(sample.image.name)

    def load_label(self, sample: Sample) -> np.ndarray:
        """H x W int64 label map, reduce_zero_label applied."""
        try:
            with Image.open(sample.label) as img:
                label = np.array(img).astype(np.int64)
        except (OSError, ValueError) as exc:
            raise GlaclipError(f"cannot read label map {sample.label}: {' '.join(str(exc).split())}") from None
        if label.ndim != 2:
            raise GlaclipError(f"label map {sample.label} must be single-channel (index or palette PNG), "
                               f"got shape {label.shape}")
        if self.spec.reduce_zero_label:
            label = reduce_zero_label(label, self.ignore_index)
        return label


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg's mapping: 0 -> ignore, k -> k - 1, ignore stays ignore."""
    out = label.copy()
    out[label == 0] = ignore_index
    out = out - 1
    out[out == ignore_index - 1] = ignore_index
    return out


def open_dataset(name: str, root: str | Path, class_file: str | Path | None = None, images: str = "images",
                 labels: str = "labels", label_suffix: str = ".png", reduce_zero: bool = False,
                 ignore_index: int | None = None, packaged: str | None = None) -> SegDataset:
    """A benchmark by name (see SPECS) rooted at its prepared folder, or ``folder``: root/images,
    root/labels (same stem + label_suffix) and a class file (default root/classes.txt).

    ignore_index: the label value left out of the metrics; None: the data set's own (65535 for the
    16-bit TIFF sets ade847 and context459, else 255).

    class_file (a user's file) wins over packaged (a file in glaclip/classes, as a protocol names it),
    which wins over the data set's default file."""
    name = ALIASES.get(name.lower(), name.lower())
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GlaclipError(f"data root {root} is not a folder")
    if name == FOLDER:
        spec = DatasetSpec(FOLDER, f"folder {root}", "", images, labels, "", label_suffix,
                           reduce_zero_label=reduce_zero)
        classes = read_class_file(class_file or root / "classes.txt")
        return SegDataset(spec, root, _list_folder(root, spec), classes, _or(ignore_index, IGNORE_INDEX))
    if name not in SPECS:
        raise GlaclipError(f"unknown dataset {name!r}; choose from {', '.join(dataset_names())}")
    spec = SPECS[name]
    classes = read_class_file(class_file) if class_file else packaged_classes(packaged or spec.classes)
    lister = _list_split if spec.split_file else _list_labelled if spec.from_labels else _list_suffixed
    return SegDataset(spec, root, lister(root, spec), classes, _or(ignore_index, spec.ignore_index))


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _need_dir(root: Path, sub: str, spec: DatasetSpec) -> Path:
    path = root / sub
    if not path.is_dir():
        hint = f" (the {spec.name} root is usually .../{spec.root_hint})" if spec.root_hint else ""
        raise GlaclipError(f"expected folder {path} for {spec.name}{hint}")
    return path


def _check_labels(samples: list[Sample], spec: DatasetSpec) -> list[Sample]:
    missing = [s for s in samples if not s.label.is_file()]
    if missing:
        raise GlaclipError(f"{len(missing)} of {len(samples)} label maps missing for {spec.name}, e.g. "
                           f"{missing[0].label} (expected beside image {missing[0].image.name})")
    if not samples:
        raise GlaclipError(f"no images found for {spec.name} under the data root")
    return samples


def _list_split(root: Path, spec: DatasetSpec) -> list[Sample]:
    img_dir, ann_dir = _need_dir(root, spec.img_dir, spec), _need_dir(root, spec.ann_dir, spec)
    split = root / spec.split_file
    if not split.is_file():
        raise GlaclipError(f"expected split file {split} listing the {spec.name} validation ids")
    ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    samples = [Sample(i, img_dir / f"{i}{spec.img_suffix}", ann_dir / f"{i}{spec.ann_suffix}") for i in ids]
    absent = [s for s in samples if not s.image.is_file()]
    if absent:
        raise GlaclipError(f"{len(absent)} images listed in {split} are missing, e.g. {absent[0].image}")
    return _check_labels(samples, spec)


def _list_suffixed(root: Path, spec: DatasetSpec) -> list[Sample]:
    img_dir, ann_dir = _need_dir(root, spec.img_dir, spec), _need_dir(root, spec.ann_dir, spec)
    samples = []
    for img in walk_files(img_dir, (spec.img_suffix,)):
        rel = img.relative_to(img_dir).as_posix()
        stem = rel[: -len(spec.img_suffix)]
        samples.append(Sample(stem, img, ann_dir / f"{stem}{spec.ann_suffix}"))
    return _check_labels(samples, spec)


def _list_labelled(root: Path, spec: DatasetSpec) -> list[Sample]:
    img_dir, ann_dir = _need_dir(root, spec.img_dir, spec), _need_dir(root, spec.ann_dir, spec)
    samples = []
    for ann in walk_files(ann_dir, (spec.ann_suffix,)):
        stem = ann.relative_to(ann_dir).as_posix()[: -len(spec.ann_suffix)]
        samples.append(Sample(stem, img_dir / f"{stem}{spec.img_suffix}", ann))
    absent = [s for s in samples if not s.image.is_file()]
    if absent:
        raise GlaclipError(f"{len(absent)} of {len(samples)} images missing for {spec.name}, e.g. "
                           f"{absent[0].image} (expected for label map {absent[0].label.name})")
    return _check_labels(samples, spec)


def _list_folder(root: Path, spec: DatasetSpec) -> list[Sample]:
    img_dir, ann_dir = _need_dir(root, spec.img_dir, spec), _need_dir(root, spec.ann_dir, spec)
    samples = []
    for img in walk_files(img_dir):
        stem = img.relative_to(img_dir).with_suffix("").as_posix()
        samples.append(Sample(stem, img, ann_dir / f"{stem}{spec.ann_suffix}"))
    return _check_labels(samples, spec)
