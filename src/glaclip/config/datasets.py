"""The benchmark data sets glaclip knows by name: layout, default class file (shipped in
glaclip/classes), ignore value, aliases. Reading a data set from disk is `runs.datasets`.

ADE20K-Full (847 classes) and PASCAL-Context 459 are read in CAT-Seg's layout (its
datasets/prepare_ade20k_full.py and prepare_pascal_context_459.py): 16-bit TIFF label maps holding the
class index, 65535 where no class applies (ADE: unlabelled or a class outside the 847; PASCAL-Context:
label 0 after the shift by one). CorrCLIPv2 reports both; its class lists are shipped as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from .classes import ClassQueries, parse_class_file, parse_classes

IGNORE_INDEX = 255
IGNORE_16BIT = 65535  # the unlabelled value of CAT-Seg's 16-bit TIFF label maps


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    classes: str  # class file shipped in glaclip/classes
    img_dir: str
    ann_dir: str
    img_suffix: str
    ann_suffix: str
    split_file: str | None = None  # one image id per line; None: every image under img_dir
    reduce_zero_label: bool = False
    root_hint: str = ""
    ignore_index: int = IGNORE_INDEX
    from_labels: bool = False  # the samples are the label maps (the image folder holds other images too)


SPECS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("voc21", "PASCAL VOC 2012 (21 classes incl. background)", "voc21.txt", "JPEGImages",
                "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt",
                root_hint="VOCdevkit/VOC2012"),
    DatasetSpec("voc20", "PASCAL VOC 2012 (20 classes, background ignored)", "voc20.txt", "JPEGImages",
                "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt", reduce_zero_label=True,
                root_hint="VOCdevkit/VOC2012"),
    DatasetSpec("context60", "PASCAL-Context (60 classes incl. background)", "context60.txt", "JPEGImages",
                "SegmentationClassContext", ".jpg", ".png", "ImageSets/SegmentationContext/val.txt",
                root_hint="VOCdevkit/VOC2010"),
    DatasetSpec("context59", "PASCAL-Context (59 classes, background ignored)", "context59.txt", "JPEGImages",
                "SegmentationClassContext", ".jpg", ".png", "ImageSets/SegmentationContext/val.txt",
                reduce_zero_label=True, root_hint="VOCdevkit/VOC2010"),
    DatasetSpec("coco_object", "COCO-Object (80 things + background)", "coco_object.txt", "images/val2017",
                "annotations/val2017", ".jpg", "_instanceTrainIds.png", root_hint="coco_stuff164k"),
    DatasetSpec("coco_stuff", "COCO-Stuff 164k (171 classes)", "coco_stuff.txt", "images/val2017",
                "annotations/val2017", ".jpg", "_labelTrainIds.png", root_hint="coco_stuff164k"),
    DatasetSpec("cityscapes", "Cityscapes (19 classes)", "cityscapes.txt", "leftImg8bit/val", "gtFine/val",
                "_leftImg8bit.png", "_gtFine_labelTrainIds.png", root_hint="cityscapes"),
    DatasetSpec("ade20k", "ADE20K (150 classes)", "ade20k.txt", "images/validation", "annotations/validation",
                ".jpg", ".png", reduce_zero_label=True, root_hint="ADEChallengeData2016"),
    # one class per entry; the names keep the release's commas (one text query each, as CorrCLIPv2 and CAT-Seg)
    DatasetSpec("ade847", "ADE20K-Full (847 classes, CAT-Seg's layout)", "ade847.json",
                "images_detectron2/validation", "annotations_detectron2/validation", ".jpg", ".tif",
                root_hint="ADE20K_2021_17_01", ignore_index=IGNORE_16BIT),
    DatasetSpec("context459", "PASCAL-Context (459 classes, CAT-Seg's layout)", "context459.txt", "JPEGImages",
                "annotations_detectron2/pc459_val", ".jpg", ".tif", root_hint="VOCdevkit/VOC2010",
                ignore_index=IGNORE_16BIT, from_labels=True),
]}


ALIASES = {"voc": "voc21", "pc60": "context60", "pc59": "context59", "object": "coco_object",
           "stuff": "coco_stuff", "city": "cityscapes", "ade": "ade20k", "pc459": "context459",
           "ade20k_full": "ade847", "ade_full": "ade847"}


FOLDER = "folder"


def packaged_classes(filename: str) -> ClassQueries:
    """A class file shipped in glaclip/classes (e.g. 'voc21.txt', 'voc21-proxyclip.txt'): one class per line,
    synonyms separated by ';', commas kept in a name as the releases read them (CorrCLIPv2's Cityscapes
    'people, person' is one query); a .json file is a list with one item per class (a name or a list of
    synonyms)."""
    text = resources.files("glaclip").joinpath("classes", filename).read_text(encoding="utf-8")
    if filename.lower().endswith(".json"):
        return parse_class_file(text, filename)
    return parse_classes([line for line in text.splitlines() if line.strip()])


def builtin_classes(spec: DatasetSpec) -> ClassQueries:
    return packaged_classes(spec.classes)


def dataset_names() -> list[str]:
    return list(SPECS) + [FOLDER]
