"""Segmenting whole collections: `glaclip segment` over many images, resumable, sharded under
torchrun, with background decoding, windows of consecutive images batched into one backbone forward,
per-image outputs mirrored under --out, a COCO export and a run summary.

Layout of --out: the per-image files (`export.output_paths`), `glaclip-run.json` (the manifest: every
setting; a resume with other settings is refused), `.glaclip-progress/rank<R>.jsonl` (one fsynced
line per finished image: status, seconds, shares, COCO annotations), and at the end `summary.csv`,
`summary.json` and with --export coco `coco.json`, written by rank 0 from the logs in input order,
so an interrupted-and-resumed or a sharded run ends with exactly the files of a plain run.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .collection import Item, ProgressLog, Shard, barrier, check_manifest, check_random_weights, read_logs, write_atomic
from .encoding import ImageEncoding, is_encoding_file
from .errors import GlaclipError
from .export import coco_annotations, coco_document, image_record, output_paths, write_image_outputs, write_summary
from .images import load_image
from .text import ClassQueries
from .visualize import distinct_palette, remove_stale_temporaries

MANIFEST = "glaclip-run.json"
PROGRESS = ".glaclip-progress"
FORMAT = 1


@dataclass
class Options:
    save_probs: bool = False
    alpha: float = 0.5
    export: str | None = None  # "coco"
    batch_images: int = 4  # images whose windows may share a backbone forward
    workers: int = 2  # background decoding threads
    overwrite: bool = False
    save_encoding: bool = False  # also write NAME.encoding.safetensors (re-segment later without the backbones)


def _identity(seg, queries: ClassQueries, opts: Options) -> dict:
    return {"format": FORMAT, "classes": [list(s) for s in queries.synonyms], "settings": seg.preset.settings(),
            "preset": seg.preset.to_dict(), **seg.models(), "dtype": str(seg.clip.dtype).replace("torch.", ""),
            "outputs": {"save_probs": opts.save_probs, "alpha": opts.alpha, "export": opts.export,
                        "save_encoding": opts.save_encoding}}


def _load_item(item: Item):
    """An image as an array, or a saved encoding with its source image (None when that file is gone)."""
    if not is_encoding_file(item.path):
        return load_image(item.path)
    enc = ImageEncoding.load(item.path)
    rgb = None
    if enc.image_path and Path(enc.image_path).is_file():
        try:
            rgb = load_image(enc.image_path)
        except GlaclipError:
            rgb = None
    if rgb is not None and rgb.shape[:2] != tuple(enc.size):
        rgb = None  # the file at that path is another image now
    if rgb is None:
        warnings.warn(f"the image of encoding {item.path} ({enc.image_path or 'unknown'}) is gone or changed; "
                      "writing its outputs without the overlay", RuntimeWarning, stacklevel=2)
    return enc, rgb


def _decoded(items: list[Item], workers: int) -> Iterator[tuple[Item, object]]:
    """Images (or encodings) decoded ahead in background threads (a bounded window), in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead = max(2, 2 * workers)
        futures = [pool.submit(_load_item, it) for it in items[:ahead]]
        for i, item in enumerate(items):
            if i + ahead < len(items):
                futures.append(pool.submit(_load_item, items[i + ahead]))
            try:
                yield item, futures[i].result()
            except GlaclipError as exc:
                yield item, exc
            futures[i] = None  # drop the decoded image once handed out


def segment_collection(seg, items: list[Item], queries: ClassQueries, out: Path, opts: Options,
                       shard: Shard | None = None, progress: bool = True, echo=None) -> dict:
    """Segment `items` into `out`; returns {"images", "done", "failed", "skipped", "failures": [...]}.

    A finished image (its log line and all its files present) is skipped unless opts.overwrite."""
    from tqdm import tqdm

    shard = shard or Shard()
    out = Path(out)
    logs = out / PROGRESS
    check_random_weights(seg.models(), shard, not opts.overwrite and (out / MANIFEST).exists()
                         and bool(read_logs(logs, "output")), out, "--overwrite")
    check_manifest(out / MANIFEST, _identity(seg, queries, opts), not opts.overwrite, shard, what="segmentation run")
    if shard.rank == 0:  # before any rank writes: no temporary file can be in use
        if opts.overwrite:
            for f in logs.glob("rank*.jsonl"):
                f.unlink()
        remove_stale_temporaries(out)
    barrier(shard)
    done = {} if opts.overwrite else read_logs(logs, "output")
    mine = items[shard.rank :: shard.world]

    def complete(it: Item) -> bool:
        rec = done.get(it.rel)
        return bool(rec) and rec["status"] == "ok" and all(
            (out / f).exists() for f in rec.get("files", []))

    todo = [it for it in mine if not complete(it)]
    if todo:
        seg.query_embeddings(queries)  # once, with its own progress bar, before the images' bar starts
    palette = distinct_palette(len(queries))
    settings = seg.preset.settings(queries.queries)
    preset_dict, preset_line, models = seg.preset.to_dict(), seg.preset.describe(), seg.models()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="segmenting", unit="img",
               disable=not progress or shard.rank != 0, file=sys.stderr, smoothing=0.1)
    failures = []
    with ProgressLog(logs, shard.rank) as log:
        batch: list[tuple[Item, object]] = []

        def flush() -> None:
            if not batch:
                return
            start = time.perf_counter()
            images = [(k, rgb) for k, (_, rgb) in enumerate(batch) if not isinstance(rgb, tuple)]
            encodings: dict[int, object] = {}
            try:
                for (k, _), enc in zip(images, seg.encode_images([rgb for _, rgb in images])):
                    encodings[k] = enc
            except GlaclipError:  # isolate the image at fault
                for k, rgb in images:
                    try:
                        encodings[k] = seg.encode_images([rgb])[0]
                    except GlaclipError as exc:
                        encodings[k] = exc
            per_image = (time.perf_counter() - start) / len(batch)  # the shared backbone work, split evenly
            for k, (it, loaded) in enumerate(batch):
                began = time.perf_counter()
                if isinstance(loaded, tuple):
                    encodings[k], rgb = loaded
                else:
                    rgb = loaded
                    if not isinstance(encodings[k], Exception):
                        encodings[k].image_path = str(it.path)
                enc = encodings[k]
                try:
                    res = enc if isinstance(enc, Exception) else seg.predict(enc, queries)
                except GlaclipError as exc:
                    res = exc
                if isinstance(res, Exception):
                    fail(it, str(res))
                    continue
                paths = output_paths(out, it.rel, opts.save_probs, overlay=rgb is not None,
                                     encoding=opts.save_encoding and not isinstance(loaded, tuple))
                record = image_record(str(it.path), res.labels, res.classes, queries.synonyms, palette, settings,
                                      preset_dict, preset_line, models)
                write_image_outputs(paths, rgb, res.labels, res.classes, palette, opts.alpha, record,
                                    res.probs if opts.save_probs else None, enc)
                entry = {"output": it.rel, "image": str(it.path), "status": "ok", "reason": "",
                         "seconds": round(per_image + time.perf_counter() - began, 3),
                         "width": int(res.labels.shape[1]), "height": int(res.labels.shape[0]),
                         "shares": {c["name"]: c["share"] for c in record["classes"]},
                         "files": [p.relative_to(out).as_posix() for p in paths.values()]}
                if opts.export == "coco":
                    entry["annotations"] = coco_annotations(res.labels, len(queries))
                log.add(entry)
                bar.update(1)
            batch.clear()

        def fail(it: Item, reason: str) -> None:
            failures.append(f"{it.path}: {reason}")
            log.add({"output": it.rel, "image": str(it.path), "status": "failed", "reason": reason, "seconds": None})
            bar.write(f"glaclip: skipped {reason}", file=sys.stderr)
            bar.update(1)

        for item, rgb in _decoded(todo, opts.workers):
            if isinstance(rgb, Exception):
                fail(item, str(rgb))
                continue
            batch.append((item, rgb))
            if len(batch) >= max(1, opts.batch_images):
                flush()
        flush()
    bar.close()
    barrier(shard)
    summary = {"images": len(items), "failures": failures}
    if shard.rank == 0:
        summary.update(_finish(out, items, queries, opts, settings))
    barrier(shard)
    return summary


def _finish(out: Path, items: list[Item], queries: ClassQueries, opts: Options, settings: dict) -> dict:
    """Summary (and COCO file) from every rank's log, in input order."""
    records = read_logs(out / PROGRESS, "output")
    rows, coco_images = [], []
    for it in items:
        rec = records.get(it.rel) or {"status": "missing", "reason": "not processed", "seconds": None}
        rows.append({"image": str(it.path), "output": it.rel, "status": rec["status"], "reason": rec.get("reason", ""),
                     "seconds": rec.get("seconds"), "shares": rec.get("shares", {})})
        if opts.export == "coco" and rec["status"] == "ok":
            coco_images.append({"file_name": it.rel + it.path.suffix, "width": rec["width"], "height": rec["height"],
                                "annotations": rec["annotations"]})
    csv_path, json_path = write_summary(out, rows, queries.names)
    written = {"summary": [str(csv_path), str(json_path)], "failed": sum(r["status"] != "ok" for r in rows)}
    if opts.export == "coco":
        write_atomic(out / "coco.json", json.dumps(coco_document(coco_images, queries.names, settings)))
        written["coco"] = str(out / "coco.json")
    return written
