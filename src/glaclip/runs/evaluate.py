"""Evaluation runner: predictions over a data set -> mIoU / mBoundaryIoU / aAcc / mAcc / BER, resumable
and sharded.

Runs on the collection runner (`runner`): ``OUT/run.json`` is the manifest (data set, classes,
settings, models by weight content), and every finished image appends one line (its sparse
confusion counts, per-class boundary IoU counts, window-edge counts and its region masks'
fingerprint) to ``OUT/progress/rank<R>.jsonl`` and syncs it, so a killed run resumes without
recomputing anything it finished; integer counts make the final numbers
identical to an uninterrupted run. Images and labels are decoded ahead in background threads. Under
``torchrun`` each rank takes every WORLD_SIZE-th image and the counts are all-reduced.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GlaclipError
from ..io.files import write_atomic
from ..io.images import load_image, resized_shape
from ..models.devices import dtype_name
from ..segmenter import Segmenter
from .collection import Shard, all_reduce, barrier
from .datasets import SegDataset
from .mask_source import MaskSource, fingerprint
from .metrics import (
    BOUNDARY_DILATION,
    boundary_counts,
    boundary_iou_counts,
    confusion,
    summarize,
    summarize_boundary,
    window_edges,
)
from .runner import Run, begin, model_identity, run_items

FORMAT = 3  # 3: per-image Boundary IoU counts, ignore index in the identity; 2: models by weight content


def run_identity(segmenter: Segmenter, dataset: SegDataset, limit: int | None,
                 masks: MaskSource | None = None) -> dict:
    """What must match for a resumed run to continue an earlier one (as it reads back from JSON)."""
    return json.loads(json.dumps({
        "format": FORMAT,
        "dataset": dataset.spec.name,
        "root": str(dataset.root.resolve()),
        "classes": [list(s) for s in dataset.classes.synonyms],
        "ignore_index": dataset.ignore_index,
        "boundary_dilation": BOUNDARY_DILATION,
        "preset": segmenter.preset.to_dict(),
        **model_identity(segmenter),
        "dtype": dtype_name(segmenter.clip.dtype),
        "limit": limit,
        "masks": masks.identity() if masks is not None else None,
    }))


def evaluate(segmenter: Segmenter, dataset: SegDataset, out: str | Path, limit: int | None = None,
             resume: bool = True, progress: bool = True, shard: Shard | None = None,
             on_image: Callable[[str], None] | None = None, workers: int = 2,
             masks: MaskSource | None = None) -> dict:
    """Evaluate, write OUT/results.json and OUT/results.md (rank 0), and return the results dict.

    workers: background threads decoding images and labels ahead. on_image(name): called after
    each image's counts are logged. masks: the images' region masks (files looked up by the image's
    path relative to the data set's image folder, or SAM 2); a missing or unfit mask file stops the
    run with one line naming the image and the file (a benchmark needs every image)."""
    shard = shard or Shard()
    if masks is not None:
        masks.check_shard(shard)
    out = Path(out)
    samples = dataset.samples[:limit] if limit else dataset.samples
    identity = run_identity(segmenter, dataset, limit, masks)
    run = Run(out, "run.json", "progress", key="name", restart="--no-resume")
    done = begin(run, identity, shard, resume=resume, extra={"weights_from": segmenter.models()}).done
    mine = samples[shard.rank :: shard.world]
    todo = [s for s in mine if s.name not in done]
    c = len(dataset.classes)
    cm = np.zeros((c + 1, c), dtype=np.int64)
    ber = np.zeros(2, dtype=np.int64)
    biou = np.zeros((2, c), dtype=np.int64)  # per class: boundary intersection, union
    for s in mine:
        if s.name in done:
            _add_record(cm, ber, biou, done[s.name])
    w = segmenter.preset.window
    odd_values: set[int] = set()
    started = time.perf_counter()

    def load(s):
        rgb, label = load_image(s.image), dataset.load_label(s)
        if label.shape != rgb.shape[:2]:
            raise GlaclipError(f"label map {s.label} is {label.shape[1]}x{label.shape[0]} but image "
                               f"{s.image} is {rgb.shape[1]}x{rgb.shape[0]}")
        regions = None if masks is None else masks.read(s.image, dataset.image_relative(s), rgb.shape[:2])
        return rgb, label, regions

    def handle(group):
        for s, (rgb, label, regions) in group:
            if masks is not None and masks.generates:
                regions = masks.generate(rgb, s.image)
            pred = segmenter.predict(rgb, dataset.classes, masks=regions).labels
            image_cm = confusion(pred, label, c, dataset.ignore_index)
            grid = segmenter.grid_for(*resized_shape(*rgb.shape[:2], w.short_side, w.max_long_side))
            diff, counted = boundary_counts(pred, label, window_edges(grid, *rgb.shape[:2]), dataset.ignore_index)
            nz = np.flatnonzero(image_cm)
            inter, union = boundary_iou_counts(pred, label, c, dataset.ignore_index)
            hit = np.flatnonzero(union)
            rec = {"name": s.name, "cm": [nz.tolist(), image_cm.ravel()[nz].tolist()], "ber": [diff, counted],
                   "biou": [hit.tolist(), inter[hit].tolist(), union[hit].tolist()]}
            if regions is not None:
                rec["masks"] = fingerprint(regions)
            if image_cm[c].any():
                odd = (label != dataset.ignore_index) & ((label < 0) | (label >= c))
                rec["oor"] = np.unique(label[odd])[:50].tolist()
                odd_values.update(rec["oor"])
            yield s, rec

    def counted(s, rec: dict) -> None:
        _add_record(cm, ber, biou, rec)
        if on_image is not None:
            on_image(s.name)

    run_items(run, shard, todo, len(mine), load, handle, workers=workers, done=counted, progress=progress,
              desc=dataset.spec.name)
    cm, ber, biou = all_reduce(cm, shard), all_reduce(ber, shard), all_reduce(biou, shard)
    result = _results(cm, ber, biou, dataset, segmenter, len(samples), time.perf_counter() - started)
    result["masks"] = None if masks is None else {"source": masks.describe(), **masks.identity()}
    seen = sorted({v for s in mine for v in (done.get(s.name) or {}).get("oor", [])} | set(odd_values))
    odd = int(cm[c].sum())
    share = float(odd / max(cm.sum(), 1) * 100)
    result["out_of_range_labels"] = {"pixels": odd, "share_pct": share, "values": seen[:50]}
    if odd and shard.rank == 0:
        warnings.warn(f"{odd} labelled pixels ({share:.4f}%) hold values "
                      f"outside 0..{c - 1} that are not the ignore index {dataset.ignore_index} (values: "
                      f"{', '.join(map(str, seen[:20]))}); as in mmseg they count in the predicted area only",
                      RuntimeWarning, stacklevel=2)
    if shard.rank == 0:
        write_atomic(out / "results.json", json.dumps(result, indent=2))
        write_atomic(out / "results.md", to_markdown(result))
    barrier(shard)
    return result


def _add_record(cm: np.ndarray, ber: np.ndarray, biou: np.ndarray, rec: dict) -> None:
    idx, counts = rec["cm"]
    np.add.at(cm.reshape(-1), np.asarray(idx, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    ber += np.asarray(rec["ber"], dtype=np.int64)
    seen, inter, union = (np.asarray(v, dtype=np.int64) for v in rec["biou"])
    np.add.at(biou[0], seen, inter)
    np.add.at(biou[1], seen, union)


def _results(cm: np.ndarray, ber: np.ndarray, biou: np.ndarray, dataset: SegDataset, segmenter: Segmenter,
             images: int, seconds: float) -> dict:
    metrics = summarize(cm, dataset.classes.names)
    mbiou, per_class_biou = summarize_boundary(biou[0], biou[1])
    for row, b, i, u in zip(metrics["per_class"], per_class_biou, biou[0].tolist(), biou[1].tolist()):
        row.update({"BoundaryIoU": b, "boundary_intersection": i, "boundary_union": u})
    return {
        "dataset": dataset.spec.name,
        "images": images,
        "mIoU": metrics["mIoU"],
        "mBoundaryIoU": mbiou,
        "boundary_dilation": BOUNDARY_DILATION,
        "ignore_index": dataset.ignore_index,
        "aAcc": metrics["aAcc"],
        "mAcc": metrics["mAcc"],
        "BER": float(ber[0] / ber[1] * 100) if ber[1] else None,
        "boundary_pairs": int(ber[1]),
        "per_class": metrics["per_class"],
        "settings": segmenter.preset.settings(dataset.classes.queries),
        "preset": segmenter.preset.to_dict(),
        "preset_line": segmenter.describe(),
        **segmenter.models(),
        "seconds_this_run": round(seconds, 1),
        "confusion": cm.tolist(),
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.2f}"


def to_markdown(result: dict) -> str:
    lines = [
        f"# {result['dataset']}: {result['images']} images",
        "",
        "| mIoU | mBoundaryIoU | aAcc | mAcc | BER |",
        "|---|---|---|---|---|",
        f"| {_fmt(result['mIoU'])} | {_fmt(result['mBoundaryIoU'])} | {_fmt(result['aAcc'])} | {_fmt(result['mAcc'])} "
        f"| {_fmt(result['BER'])} |",
        "",
        f"`{result['preset_line']}`",
        "",
        f"CLIP {result['clip']['model']} ({result['clip']['weights']})"
        + (f", VFM {result['vfm']['model']} ({result['vfm']['weights']})" if result["vfm"] else ""),
        "",
        "| class | IoU | Boundary IoU | Acc | GT pixels |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['class']} | {_fmt(r['IoU'])} | {_fmt(r['BoundaryIoU'])} | {_fmt(r['Acc'])} | {r['gt_pixels']} |"
              for r in result["per_class"]]
    return "\n".join(lines) + "\n"


