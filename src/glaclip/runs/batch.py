"""Segmenting whole collections: `glaclip segment` over many images, resumable, sharded under
torchrun, with background decoding, windows of consecutive images batched into one backbone forward,
per-image outputs mirrored under --out, a COCO or FiftyOne export and a run summary.

Layout of --out: the per-image files (`export.output_paths`), `glaclip-run.json` (the manifest: the
inputs and every setting that changes a file's content, which a resume must match, and the kinds of
extra outputs asked for), `.glaclip-progress/rank<R>.jsonl` (one fsynced line per finished image:
status, seconds, shares, its files by kind, COCO annotations), and at the end `summary.csv`,
`summary.json` and with --export coco `coco.json`, written by rank 0 from the logs in input order,
so an interrupted-and-resumed or a sharded run ends with exactly the files of a plain run.
--export fiftyone also writes, per image, `fiftyone/data/NAME.EXT` (a hard link to the image, or a
copy) and `fiftyone/labels/NAME.png` (the label map, grayscale), recorded in the log like the other
files, and at the end `fiftyone/classes.json` (the class names in index order = mask values).

A rerun that asks for other extra outputs (--save-probs, --save-encoding, --save-masks, --export) continues
the run: finished images that lack a newly asked-for kind are recomputed, and at the end rank 0
removes every file the logs record that this run does not write (the kinds no longer asked for).
--overwrite starts over: it lists the earlier run's recorded files in `.glaclip-progress/
superseded.json` and the end of the new run removes those it did not rewrite. Only files the logs
record, with the names this module gives, inside --out, are ever removed.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ..config.classes import ClassQueries
from ..errors import GlaclipError
from ..io.export import (
    FIFTYONE,
    FIFTYONE_CLASSES,
    coco_annotations,
    coco_document,
    fiftyone_paths,
    image_record,
    output_paths,
    write_fiftyone_sample,
    write_image_outputs,
    write_summary,
)
from ..io.files import write_atomic
from ..io.pictures import distinct_palette
from ..models.devices import dtype_name
from ..steps.encoding import is_encoding_file
from .batch_items import Loaded, file_name, load_item, source_image
from .collection import (
    MANIFEST,
    PROGRESS,
    Item,
    Shard,
    barrier,
    input_identity,
    input_root,
    iter_logs,
    output_suffixes,
    read_logs,
    refuse_other_settings,
)
from .mask_source import MaskSource, fingerprint
from .runner import Run, begin, model_identity, run_items

FORMAT = 3  # 3: models identified by weight content (2: by path)
SUPERSEDED = "superseded.json"  # in PROGRESS: files of an earlier run that the end of this one removes


@dataclass
class Options:
    save_probs: bool = False
    alpha: float = 0.5
    export: str | None = None  # "coco" or "fiftyone"
    batch_images: int = 4  # images whose windows may share a backbone forward
    workers: int = 2  # background decoding threads
    overwrite: bool = False
    save_encoding: bool = False  # also write NAME.encoding.safetensors (re-segment later without the backbones)
    masks: MaskSource | None = None  # each image's region masks (files or SAM 2), for methods that read them
    save_masks: bool = False  # also write NAME.masks.npz: the masks each image's encoding used


def _identity(seg, queries: ClassQueries, opts: Options, items: list[Item]) -> dict:
    """What a resumed run must match: the inputs and everything that changes an output file's content."""
    return {"format": FORMAT, "inputs": input_identity(items), "classes": [list(s) for s in queries.synonyms],
            "settings": seg.preset.settings(), "preset": seg.preset.to_dict(), **model_identity(seg),
            "dtype": dtype_name(seg.clip.dtype), "alpha": opts.alpha,
            "masks": opts.masks.identity() if opts.masks is not None else None}


def _extra(seg, opts: Options) -> dict:
    """Written beside the identity, not compared: the kinds of extra outputs asked for (may change
    between the invocations of one run) and, for information, where the weights were loaded from."""
    return {"outputs": {"save_probs": opts.save_probs, "save_encoding": opts.save_encoding,
                        "save_masks": opts.save_masks, "export": opts.export},
            "weights_from": seg.models()}


def _kept_kinds(opts: Options) -> set[str]:
    """The kinds of per-image files this run writes (the overlay and the FiftyOne image and labels
    only where the image is at hand)."""
    return {"labels", "overlay", "json"} | ({"probs"} if opts.save_probs else set()) | (
        {"encoding"} if opts.save_encoding else set()) | ({"masks"} if opts.save_masks else set()) | (
        {"fiftyone_image", "fiftyone_labels"} if opts.export == FIFTYONE else set())


_RUN_LEVEL = {"coco": "coco.json", FIFTYONE: FIFTYONE_CLASSES}  # each export's file written at the end


def _files(rec: dict) -> dict[str, str]:
    """A log record's files by kind (format 1 logs listed them without kinds)."""
    files = rec.get("files") or {}
    return files if isinstance(files, dict) else {str(i): f for i, f in enumerate(files)}


def _refuse_other_run(old: dict, identity: dict, out: Path) -> None:
    """A resume continues only the same run: same format, same inputs, same settings."""
    again = "use another --out, or start over with --overwrite"
    if not old:
        raise GlaclipError(f"{out} holds an earlier run whose {MANIFEST} is missing or cannot be read; {again}")
    if old.get("format") != FORMAT:
        raise GlaclipError(f"{out} holds a segmentation run of another glaclip version (format "
                           f"{old.get('format')}); {again}")
    was, now = old.get("inputs") or {}, identity["inputs"]
    if was != now:
        same = "the same number under the same folder, but other files" if (
            was.get("images"), was.get("root")) == (now["images"], now["root"]) else \
            f"now {now['images']} under {now['root']}"
        raise GlaclipError(f"{out} holds a segmentation run over other inputs ({was.get('images')} images under "
                           f"{was.get('root')}; {same}); a different input set is a different run: {again}")
    refuse_other_settings({k: v for k, v in old.items() if k not in ("outputs", "weights_from")}, identity, out,
                          "segmentation run", "--overwrite")


def _supersede(out: Path, old: dict | None, overwrite: bool) -> None:
    """Rank 0, before any image and before --overwrite drops the earlier logs: list the earlier run's
    files that the end of this run removes unless it rewrote them."""
    logs = out / PROGRESS
    listed = set(_superseded(out))
    if overwrite:
        for rec in iter_logs(logs):
            listed |= set(_files(rec).values())
    if old and (old.get("outputs") or {}).get("export") in _RUN_LEVEL:
        listed.add(_RUN_LEVEL[old["outputs"]["export"]])
    if listed:
        logs.mkdir(parents=True, exist_ok=True)
        write_atomic(logs / SUPERSEDED, json.dumps(sorted(listed), indent=0))


def _superseded(out: Path) -> list[str]:
    try:
        listed = json.loads((out / PROGRESS / SUPERSEDED).read_text())
    except (OSError, ValueError):
        return []
    return [f for f in listed if isinstance(f, str)] if isinstance(listed, list) else []


def _remove_recorded(out: Path, rels: set[str]) -> list[str]:
    """Remove the files `rels` (relative to out) that carry this module's output names (or lie in the
    FiftyOne export's data/ and labels/) inside out (a folder replaced by a link to elsewhere is left
    alone); then their emptied folders. A FiftyOne data/ file is a link to (or copy of) an image:
    removing it leaves the image alone."""
    ours = output_suffixes() + tuple(_RUN_LEVEL.values())
    top = os.path.realpath(out)
    removed = []
    for rel in sorted(rels):
        p = PurePosixPath(rel)
        path = out / p
        fiftyone = len(p.parts) > 2 and p.parts[0] == FIFTYONE and p.parts[1] in ("data", "labels")
        if p.is_absolute() or ".." in p.parts or not (rel.endswith(ours) or fiftyone) or \
                os.path.commonpath([top, os.path.realpath(path.parent)]) != top:
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(rel)
            for parent in path.parents:
                if parent == out or not parent.is_relative_to(out):
                    break
                try:
                    parent.rmdir()  # only an emptied folder
                except OSError:
                    break
    return removed


def _complete(rec: dict | None, it: Item, out: Path, opts: Options) -> bool:
    """A finished image: logged ok, every kind of file this run writes for it recorded and present."""
    if not rec or rec["status"] != "ok" or (opts.export == "coco" and "annotations" not in rec):
        return False
    files, kinds = _files(rec), _kept_kinds(opts)
    if is_encoding_file(it.path):
        kinds -= {"encoding", "overlay", "masks"}  # an encoding is not saved again; its overlay needs its image
        if "overlay" not in files:  # nor can its FiftyOne files be written without the image
            kinds -= {"fiftyone_image", "fiftyone_labels"}
    return kinds <= files.keys() and all((out / f).exists() for k, f in files.items() if k in _kept_kinds(opts))


def segment_collection(seg, items: list[Item], queries: ClassQueries, out: Path, opts: Options,
                       shard: Shard | None = None, progress: bool = True, echo=None) -> dict:
    """Segment `items` into `out`; returns {"images", "done", "failed", "skipped", "failures": [...]}.

    A finished image (logged ok, with every kind of file this run writes) is skipped unless
    opts.overwrite. A resume must name the same inputs, settings and masks (refused otherwise)."""
    shard = shard or Shard()
    if opts.masks is not None:
        opts.masks.check_shard(shard)
        opts = replace(opts, masks=opts.masks.indexed(items))  # looked up by output names
    out = Path(out)
    run = Run(out, MANIFEST, PROGRESS, key="output", restart="--overwrite", order="attempt",
              what="segmentation run")
    identity = _identity(seg, queries, opts, items)
    started = begin(run, identity, shard, resume=not opts.overwrite, extra=_extra(seg, opts),
                    refuse=lambda old, now: _refuse_other_run(old, now, out),
                    prepare=lambda old: _supersede(out, old, opts.overwrite))
    attempt = started.attempt
    mine = items[shard.rank :: shard.world]
    root = input_root(items)

    todo, changed = [], []
    for it in mine:
        rec = started.done.get(it.rel)
        other = False  # masks of an image segmented before: other now (True), or unreadable (None: kept as is)
        if rec and rec["status"] == "ok" and "masks" in rec and opts.masks is not None and \
                not is_encoding_file(it.path):
            other = opts.masks.changed(it.path, it.name, rec["masks"], (rec["height"], rec["width"]))
        if other:
            changed.append(it.name)
        if other or (other is not None and not _complete(rec, it, out, opts)):
            todo.append(it)
    if changed and echo is not None:
        echo(f"{len(changed)} finished image(s) have other region masks now than when segmented, segmenting "
             f"them again (first: {changed[0]})")
    if todo:
        seg.query_embeddings(queries)  # once, with its own progress bar, before the images' bar starts
    palette = distinct_palette(len(queries))
    settings = seg.preset.settings(queries.queries)
    preset_dict, preset_line, models = seg.preset.to_dict(), seg.describe(), seg.models()
    mask_line = opts.masks.describe() if opts.masks is not None else None

    def handle(batch: list[tuple[Item, Loaded]]):
        """Encode a group of images in shared backbone forwards (masks generated first where SAM 2
        makes them), then predict and write each."""
        start = time.perf_counter()
        encodings: dict[int, object] = {k: ld.enc for k, (_, ld) in enumerate(batch) if ld.enc is not None}
        masks: dict[int, object] = {}
        for k, (it, ld) in enumerate(batch):
            if ld.enc is None:
                try:
                    masks[k] = opts.masks.generate(ld.rgb, it.path) if opts.masks is not None and \
                        opts.masks.generates else ld.masks
                except GlaclipError as exc:
                    encodings[k] = exc
        images = list(masks)
        try:
            for k, enc in zip(images, seg.encode_images([batch[k][1].rgb for k in images],
                                                        masks=[masks[k] for k in images])):
                encodings[k] = enc
        except GlaclipError:  # isolate the image at fault
            for k in images:
                try:
                    encodings[k] = seg.encode_images([batch[k][1].rgb], masks=[masks[k]])[0]
                except GlaclipError as exc:
                    encodings[k] = exc
        per_image = (time.perf_counter() - start) / len(batch)  # the shared backbone work, split evenly
        for k, (it, loaded) in enumerate(batch):
            began = time.perf_counter()
            rgb, enc, saved = loaded.rgb, encodings[k], loaded.enc is not None
            if not saved and not isinstance(enc, Exception):
                enc.image_path = str(it.path)
            try:
                res = enc if isinstance(enc, Exception) else seg.predict(enc, queries)
            except GlaclipError as exc:
                res = exc
            if isinstance(res, Exception):
                yield it, res
                continue
            paths = output_paths(out, it.rel, opts.save_probs, overlay=rgb is not None,
                                 encoding=opts.save_encoding and not saved, masks=opts.save_masks and not saved)
            record = image_record(str(it.path), res.labels, res.classes, queries.synonyms, palette, settings,
                                  preset_dict, preset_line, models)
            if opts.masks is not None:
                record["masks"] = {"source": mask_line, "fingerprint": fingerprint(enc.masks)}
            write_image_outputs(paths, rgb, res.labels, res.classes, palette, opts.alpha, record,
                                res.probs if opts.save_probs else None, enc)
            source = source_image(it, loaded) if opts.export == FIFTYONE else None
            if source is not None:
                fo_paths = fiftyone_paths(out, it.rel, source.suffix)
                write_fiftyone_sample(fo_paths, source, res.labels, len(queries))
                paths.update(fo_paths)
            entry = {"output": it.rel, "image": str(it.path), "attempt": attempt, "status": "ok", "reason": "",
                     "seconds": round(per_image + time.perf_counter() - began, 3),
                     "file_name": file_name(it, loaded, root),
                     "width": int(res.labels.shape[1]), "height": int(res.labels.shape[0]),
                     "shares": {c["name"]: c["share"] for c in record["classes"]},
                     "masks": fingerprint(enc.masks),
                     "files": {k: p.relative_to(out).as_posix() for k, p in paths.items()}}
            if opts.export == "coco":
                entry["annotations"] = coco_annotations(res.labels, len(queries))
            yield it, entry

    def failed(it: Item, reason: str) -> dict:
        return {"output": it.rel, "image": str(it.path), "attempt": attempt, "status": "failed", "reason": reason,
                "seconds": None}

    failures = run_items(run, shard, todo, len(mine), lambda it: load_item(it, opts.masks), handle,
                         group=opts.batch_images, workers=opts.workers, failed=failed, progress=progress,
                         desc="segmenting")
    barrier(shard)
    summary = {"images": len(items), "failures": [f"{it.path}: {reason}" for it, reason in failures]}
    if shard.rank == 0:
        summary.update(_finish(out, items, queries, opts, settings, started.resuming))
    barrier(shard)
    return summary


def _finish(out: Path, items: list[Item], queries: ClassQueries, opts: Options, settings: dict,
            resumed: bool) -> dict:
    """Summary (and COCO file, or FiftyOne class list) from every rank's log, in input order; then
    remove the files earlier invocations recorded that this run does not write."""
    records = read_logs(out / PROGRESS, "output", order="attempt")
    rows, coco_images = [], []
    keep = {MANIFEST, "summary.csv", "summary.json"} | ({_RUN_LEVEL[opts.export]} if opts.export else set())
    for it in items:
        rec = records.get(it.rel) or {"status": "missing", "reason": "not processed", "seconds": None}
        rows.append({"image": str(it.path), "output": it.rel, "status": rec["status"], "reason": rec.get("reason", ""),
                     "seconds": rec.get("seconds"), "shares": rec.get("shares", {})})
        if rec["status"] == "ok":
            keep |= {f for k, f in _files(rec).items() if k in _kept_kinds(opts)}
        if opts.export == "coco" and rec["status"] == "ok":
            coco_images.append({"file_name": rec["file_name"], "width": rec["width"], "height": rec["height"],
                                "annotations": rec["annotations"]})
    csv_path, json_path = write_summary(out, rows, queries.names)
    written = {"summary": [str(csv_path), str(json_path)], "failed": sum(r["status"] != "ok" for r in rows)}
    if opts.export == "coco":
        write_atomic(out / "coco.json", json.dumps(coco_document(coco_images, queries.names, settings)))
        written["coco"] = str(out / "coco.json")
    if opts.export == FIFTYONE:
        write_atomic(out / FIFTYONE_CLASSES, json.dumps(list(queries.names)))
        written[FIFTYONE] = str(out / FIFTYONE)
    recorded = set(_superseded(out))
    for rec in iter_logs(out / PROGRESS):
        recorded |= set(_files(rec).values())
    written["removed"] = _remove_recorded(out, recorded - keep)
    (out / PROGRESS / SUPERSEDED).unlink(missing_ok=True)
    if written["removed"] and resumed:
        n = len(written["removed"])
        warnings.warn(f"removed {n} file{'s' * (n != 1)} of the earlier invocation that this one does not write "
                      f"(e.g. {written['removed'][0]})", RuntimeWarning, stacklevel=2)
    return written
