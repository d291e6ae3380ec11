"""Writing segmentation outputs: per-image files, COCO-style RLE annotations, a FiftyOne image
segmentation directory and run summaries.

Every file goes through `files.atomic_paths` (temporary name, rename, permissions from the
umask), so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from .files import atomic_paths
from .pictures import label_image, overlay_with_legend


def output_paths(out: Path, rel: str, save_probs: bool = False, overlay: bool = True,
                 encoding: bool = False, masks: bool = False) -> dict[str, Path]:
    """The files of the image with relative path `rel`: labels PNG, overlay PNG, JSON record, and
    optionally probabilities (.npz), the image encoding (.encoding.safetensors) and the region
    masks the encoding used (.masks.npz, key instance_mask, read back by `regions.load_masks`)."""
    from .files import ENCODING_SUFFIX as SUFFIX

    base = out / rel
    paths = {"labels": base.with_name(base.name + "_labels.png")}
    if overlay:
        paths["overlay"] = base.with_name(base.name + "_overlay.png")
    paths["json"] = base.with_name(base.name + ".json")
    if save_probs:
        paths["probs"] = base.with_name(base.name + "_probs.npz")
    if encoding:
        paths["encoding"] = base.with_name(base.name + SUFFIX)
    if masks:
        from .masks import SAVED_SUFFIX

        paths["masks"] = base.with_name(base.name + SAVED_SUFFIX)
    return paths


def image_record(image: str, labels: np.ndarray, classes: Sequence[str], synonyms: Sequence[Sequence[str]],
                 palette: np.ndarray, settings: dict, preset: dict, preset_line: str, models: dict) -> dict:
    """The per-image JSON: size, per-class shares and pixel counts, colours, every setting, models."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    return {
        "image": image, "height": int(labels.shape[0]), "width": int(labels.shape[1]),
        "classes": [{"index": i, "name": n, "synonyms": list(synonyms[i]), "share": float(counts[i]) / labels.size,
                     "pixels": int(counts[i]), "color": palette[i].tolist()} for i, n in enumerate(classes)],
        "settings": settings, "preset": preset, "preset_line": preset_line, **models,
    }


def write_image_outputs(paths: dict[str, Path], rgb: np.ndarray | None, labels: np.ndarray, classes: Sequence[str],
                        palette: np.ndarray, alpha: float, record: dict, probs=None, encoding=None) -> None:
    """All files of one image (see `output_paths`), atomically together (the masks: the encoding's)."""
    shares = [c["share"] for c in record["classes"]]
    names = list(paths)
    with atomic_paths(list(paths.values())) as tmp_list:
        tmp = dict(zip(names, tmp_list))
        label_image(labels, palette).save(tmp["labels"], format="PNG")
        if "overlay" in tmp:
            overlay_with_legend(rgb, labels, classes, palette, alpha, shares).save(tmp["overlay"], format="PNG")
        tmp["json"].write_text(json.dumps(record, indent=2))
        if "probs" in tmp:
            with open(tmp["probs"], "wb") as fh:
                np.savez_compressed(fh, probs=np.asarray(probs, dtype=np.float16), labels=labels.astype(np.int32),
                                    classes=np.array(list(classes)))
        if "encoding" in tmp:
            encoding.save_to(tmp["encoding"])
        if "masks" in tmp:
            from .masks import save_masks

            save_masks(tmp["masks"], encoding.masks.cpu().numpy())


# ---------------------------------------------------------------------------------------- COCO


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a binary H x W mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE text: each count (from the third on, as the difference to the count two
    before) in 5-bit groups, low first, 0x20 marking a following group, offset by 48."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
            if not more:
                break
    return "".join(out)


def coco_annotations(labels: np.ndarray, num_classes: int) -> list[dict]:
    """One annotation per class present: compressed RLE, area and bbox [x, y, w, h] (no ids yet)."""
    h, w = labels.shape
    anns = []
    for c in np.unique(labels).tolist():
        if not 0 <= c < num_classes:
            continue
        mask = labels == c
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        anns.append({"class_index": c, "segmentation": {"size": [h, w], "counts": rle_string(rle_counts(mask))},
                     "area": int(mask.sum()),
                     "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]})
    return anns


def coco_document(images: list[dict], classes: Sequence[str], settings: dict) -> dict:
    """images: per image {"file_name", "width", "height", "annotations": [...]} in run order.
    Category ids are class index + 1 (COCO's ids start at 1)."""
    doc = {"info": {"description": "glaclip open-vocabulary segmentation", "settings": settings},
           "categories": [{"id": i + 1, "name": n, "supercategory": "glaclip"} for i, n in enumerate(classes)],
           "images": [], "annotations": []}
    for image_id, img in enumerate(images, start=1):
        doc["images"].append({"id": image_id, "file_name": img["file_name"], "width": img["width"],
                              "height": img["height"]})
        for ann in img["annotations"]:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": ann["class_index"] + 1, "segmentation": ann["segmentation"],
                                       "area": ann["area"], "bbox": ann["bbox"], "iscrowd": 0})
    return doc


# ------------------------------------------------------------------------------------ FiftyOne

FIFTYONE = "fiftyone"  # --export fiftyone: OUT/fiftyone/{data,labels}/ (ImageSegmentationDirectory) + classes.json
FIFTYONE_CLASSES = f"{FIFTYONE}/classes.json"


def mask_targets(classes: Sequence[str]) -> dict[int, str]:
    """FiftyOne's mask targets of a class list: mask value (= class index) -> display name."""
    return dict(enumerate(classes))


def fiftyone_paths(out: Path, rel: str, image_suffix: str) -> dict[str, Path]:
    """The FiftyOne files of the image with output name `rel`: the image under data/ (its own suffix)
    and its label map under labels/, with the same relative name, which is how FiftyOne's
    ImageSegmentationDirectory pairs them."""
    root = Path(out) / FIFTYONE
    return {"fiftyone_image": root / "data" / (rel + image_suffix), "fiftyone_labels": root / "labels" / (rel + ".png")}


def mask_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """The label map as a grayscale PNG image (value = class index): 8-bit up to 256 classes, else
    16-bit (FiftyOne reads masks with OpenCV, which turns palette PNGs into colours)."""
    return Image.fromarray(labels.astype(np.uint8 if num_classes <= 256 else np.uint16))


def write_fiftyone_sample(paths: dict[str, Path], source: Path, labels: np.ndarray, num_classes: int) -> None:
    """One image's FiftyOne files (see `fiftyone_paths`), each under a temporary name then renamed:
    the image as a hard link to `source` (a copy where the file system cannot link), never opened
    for writing; the label map as `mask_image`."""
    image, label = paths["fiftyone_image"], paths["fiftyone_labels"]
    if not (image.is_file() and os.path.samefile(image, source)):  # renaming a link onto itself would keep both
        with atomic_paths([image]) as (tmp,):
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(source, tmp)
    with atomic_paths([label]) as (tmp,):
        mask_image(labels, num_classes).save(tmp, format="PNG")


# ------------------------------------------------------------------------------------ summaries


def write_summary(out: Path, rows: list[dict], classes: Sequence[str]) -> tuple[Path, Path]:
    """summary.csv (one row per image: status, reason, seconds, a share column per class) and
    summary.json (the same rows)."""
    columns = ["image", "output", "status", "reason", "seconds"] + [f"share:{c}" for c in classes]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{f"share:{c}": r.get("shares", {}).get(c, "") for c in classes}})
    paths = [out / "summary.csv", out / "summary.json"]
    with atomic_paths(paths) as tmp:
        tmp[0].write_text(text.getvalue())
        tmp[1].write_text(json.dumps({"images": rows}, indent=2))
    return paths[0], paths[1]


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer contours of a boolean H x W mask's connected parts, each as [x0, y0, x1, y1, ...]
    through its boundary pixels' centres (OpenCV, straight runs reduced to their ends); parts whose
    contour has fewer than 3 corners (one-pixel-wide lines, single pixels) are left out."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(float).ravel().tolist() for c in contours if len(c) >= 3]
