"""The one collection runner: many inputs -> per-item outputs, for `glaclip segment` over a collection
(`batch.segment_collection`) and `glaclip eval` (`evaluate.evaluate`).

A run lives in a folder: a manifest (the run's identity: inputs and every setting that changes a
result, models by weight content) and a progress folder of per-rank, fsynced JSON-lines logs, one
record per finished item. `begin` is the shared preamble (the ranks agree on the identity; random
weights are neither sharded nor resumed; a resume must match the manifest, a fresh start drops the
earlier logs; the manifest is written) and returns what earlier invocations finished. `run_items`
is the shared loop: items decoded ahead in background threads, handled in groups of consecutive
items, each result logged as it comes, a progress bar on rank 0, failures listed (or raised).
Each caller keeps its own outputs, record format and manifest name.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import GlaclipError
from ..io.files import remove_stale_temporaries, write_atomic
from .collection import (
    ProgressLog,
    Shard,
    barrier,
    check_random_weights,
    iter_logs,
    read_logs,
    read_manifest,
    refuse_other_settings,
    same_on_all_ranks,
)


def model_identity(seg) -> dict:
    """The models a segmenter runs, by content: per tower its name, a hash of its structure and of
    its weights (CLIP's image tower and, under `text_weights`, its text tower; the whole VFM; Trident's
    SAM; RADIO, the auxiliary and bank CLIPs (text towers) and the memory bank of bank support), each
    hashed once per loaded model (`encoding.ImageEncoding.model_identity`,
    `text_cache.model_fingerprints`). Replacing the weights behind a path changes it; the path
    does not enter it. Random weights read "random"."""
    from ..models.identity import model_fingerprints, weights_fingerprint
    from ..steps.encoding import ImageEncoding

    models = ImageEncoding.model_identity(seg.clip, seg.vfm, seg.sam, getattr(seg, "radio", None),
                                          getattr(seg, "aux_clip", None), getattr(seg, "bank_clip", None))
    if getattr(seg, "bank", None) is not None:  # the memory bank of bank support, by content (`MemoryBank.fingerprint`)
        models["bank"] = {"name": seg.bank.files.name, "content": seg.bank.fingerprint()}
    clip = seg.clip
    models["clip"]["text_weights"] = "random" if clip.weights == "random" else model_fingerprints(
        clip.model, {"text weights": lambda: weights_fingerprint(clip.text_tensors())})["text weights"]
    return models


@dataclass
class Run:
    """Where a run keeps its files and how a rerun is told to start over.

    folder: the run's folder; manifest: its file name there; logs: the progress folder's name there;
    key: the log field that names an item; order: with several records of one item, the one with
    the highest value of this field counts (None: the first); restart: the option that starts over;
    what: the run's name in messages."""

    folder: Path
    manifest: str
    logs: str
    key: str
    restart: str
    order: str | None = None
    what: str = "run"

    @property
    def log_folder(self) -> Path:
        return self.folder / self.logs


@dataclass
class Started:
    """What `begin` found: whether this invocation continues an earlier one, that one's manifest
    (None: none; {}: unreadable), the finished records by key and this invocation's attempt number."""

    resuming: bool
    old: dict | None
    done: dict[str, dict] = field(default_factory=dict)
    attempt: int = 1


def begin(run: Run, identity: dict, shard: Shard, resume: bool = True, extra: dict | None = None,
          refuse: Callable[[dict, dict], None] | None = None,
          prepare: Callable[[dict | None], None] | None = None) -> Started:
    """The preamble of a run (on every rank): check, then (re)write the manifest.

    identity: JSON-like; a resume must match it (compared as it reads back from JSON); its "clip"
    and "vfm" entries are `model_identity`. extra: written beside it, not compared. refuse(old,
    identity): raise when the earlier manifest `old` ({} when missing or unreadable) names another
    run (default: any differing key). prepare(old): rank 0, after the checks and before the earlier
    logs are dropped (on a fresh start) and the manifest written."""
    identity = json.loads(json.dumps(identity))
    extra = json.loads(json.dumps(extra or {}))
    if not same_on_all_ranks(json.dumps(identity, sort_keys=True), shard):
        raise GlaclipError("the processes found different inputs or settings (did files change while the run "
                           "started?); run it again")
    logs = run.log_folder
    old = read_manifest(run.folder / run.manifest)
    logged = bool(read_logs(logs, run.key))
    resuming = resume and (old is not None or logged)
    check_random_weights(identity, shard, resuming and logged, run.folder, run.restart)
    if resuming:  # every rank checks, so every rank stops alike
        if refuse is not None:
            refuse(old or {}, identity)
        elif not old:
            raise GlaclipError(f"{run.folder} holds an earlier {run.what} whose {run.manifest} is missing or cannot "
                               f"be read; use another --out, or start over with {run.restart}")
        else:
            refuse_other_settings({k: v for k, v in old.items() if k not in extra}, identity, run.folder, run.what,
                                  run.restart)
    barrier(shard)
    if shard.rank == 0:  # before any rank writes: no temporary file can be in use
        if prepare is not None:
            prepare(old)
        if not resume:
            for f in logs.glob("rank*.jsonl"):
                f.unlink()
        remove_stale_temporaries(run.folder)
        logs.mkdir(parents=True, exist_ok=True)
        write_atomic(run.folder / run.manifest, json.dumps({**identity, **extra}, indent=2))
    barrier(shard)
    done = read_logs(logs, run.key, order=run.order) if resume else {}
    attempt = 1 + max((r.get("attempt", 0) for r in iter_logs(logs)), default=0)
    barrier(shard)  # every rank has read the logs before any rank appends to them
    return Started(resuming, old, done, attempt)


def decoded(items: Sequence, load: Callable, workers: int) -> Iterator[tuple[object, object]]:
    """(item, load(item)) in order, loaded ahead in background threads (a bounded window); a
    GlaclipError from load is handed out in place of the loaded value."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead = max(2, 2 * workers)
        futures = [pool.submit(load, it) for it in items[:ahead]]
        for i, item in enumerate(items):
            if i + ahead < len(items):
                futures.append(pool.submit(load, items[i + ahead]))
            try:
                yield item, futures[i].result()
            except GlaclipError as exc:
                yield item, exc
            futures[i] = None  # drop the decoded item once handed out


def run_items(run: Run, shard: Shard, items: Sequence, total: int, load: Callable,
              handle: Callable[[list], Iterable[tuple[object, object]]], *, group: int = 1, workers: int = 2,
              failed: Callable[[object, str], dict] | None = None, done: Callable[[object, dict], None] | None = None,
              progress: bool = True, desc: str = "") -> list[tuple[object, str]]:
    """The loop of a run on one rank: returns the failures as (item, reason).

    items: this rank's unfinished items (of `total` for this rank); load(item): decoded in the
    background; handle([(item, loaded), ...]): a group of up to `group` consecutive loaded items ->
    (item, record or GlaclipError) per item, in order, each logged as it comes (so a record is
    logged after whatever handle wrote for it); failed(item, reason): the record of a failed item
    (None: a failure is raised instead, after the earlier items were logged); done(item, record):
    called after each record is logged."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(items), desc=desc, unit="img", smoothing=0.1,
               disable=not progress or shard.rank != 0, file=sys.stderr)
    failures: list[tuple[object, str]] = []
    with ProgressLog(run.log_folder, shard.rank) as log:

        def finish(item, result) -> None:
            if isinstance(result, Exception):
                if failed is None:
                    raise result
                failures.append((item, str(result)))
                log.add(failed(item, str(result)))
                bar.write(f"glaclip: skipped {result}", file=sys.stderr)
            else:
                log.add(result)
                if done is not None:
                    done(item, result)
            bar.update(1)

        batch: list = []

        def flush() -> None:
            if not batch:
                return
            for item, result in handle(batch):
                finish(item, result)
            batch.clear()

        try:
            for item, loaded in decoded(items, load, workers):
                if isinstance(loaded, Exception):
                    finish(item, loaded)
                    continue
                batch.append((item, loaded))
                if len(batch) >= max(1, group):
                    flush()
            flush()
        finally:
            bar.close()
    return failures
