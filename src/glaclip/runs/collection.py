"""Many inputs -> per-item outputs: finding images, sharding under torch.distributed, resumable
progress logs and run manifests: the pieces of the collection runner (`runner.py`), on which
`glaclip segment` (via `batch.segment_collection`) and `glaclip eval` both run; nothing here knows
about models.

Inputs are files, folders (recursive, following symlinked folders once, skipping hidden files and
macOS `._*` companions), glob patterns and `@list.txt` files (one path per line, relative to the
list's folder, `#` lines are comments). Each image gets an output name that mirrors where it was
found; names are unique by construction (see `collect`), so outputs never collide.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch

from ..errors import GlaclipError
from ..io.files import ENCODING_SUFFIX  # a saved image encoding counts as an image
from .runlock import LOCK

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jp2")
# the run's own files at the top of --out: no image's outputs may take these names
MANIFEST, PROGRESS = "glaclip-run.json", ".glaclip-progress"
RUN_FILES = (MANIFEST, PROGRESS, "summary.csv", "summary.json", "coco.json", "fiftyone",  # fiftyone: --export's folder
             LOCK)


@dataclass(frozen=True)
class Item:
    path: Path  # the image file
    rel: str  # where its outputs go under --out, without suffix ("sub/dir/name"); unique in a collection
    name: str = ""  # the image's path relative to the input root ("sub/dir/name.png"), as COCO's file_name


def is_hidden(name: str) -> bool:
    return name.startswith(".")  # also macOS "._name" companions


def walk_files(root: Path, suffixes: tuple[str, ...] | None = IMAGE_SUFFIXES) -> list[Path]:
    """Files under root, sorted, following symlinked folders (each real folder once), skipping hidden
    files and folders; only `suffixes` (case-insensitive) when given."""
    out: list[Path] = []
    seen: set[str] = set()
    suffixes = tuple(x.lower() for x in suffixes) if suffixes else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for f in sorted(filenames):
            if is_hidden(f) or (suffixes and not f.lower().endswith(suffixes)):
                continue
            out.append(Path(dirpath) / f)
    return sorted(out)


def collect(inputs: list[str | Path]) -> list[Item]:
    """The images named by `inputs`, in a stable order, with collision-free relative output paths
    (relative to the deepest folder that holds every input)."""
    found: list[tuple[Path, Path]] = []  # (image, the root it was found under)
    for raw in inputs:
        text = str(raw)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise GlaclipError(f"list file not found: {listing}")
            lines = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines()]
            for line in lines:
                if line and not line.startswith("#"):
                    p = Path(line) if Path(line).is_absolute() else listing.parent / line
                    found.append((p, p.parent))
            continue
        p = Path(text)
        if p.is_dir():
            files = walk_files(p)
            if not files:
                raise GlaclipError(f"no images found in folder {p}")
            found += [(f, p) for f in files]
        elif p.exists():
            found.append((p, p.parent))
        elif glob.has_magic(text):
            shortest: dict[str, Path] = {}  # a file reached through links (or a link loop): its shortest path
            for m in sorted((Path(m) for m in glob.glob(text, recursive=True)), key=lambda m: (len(m.parts), m)):
                if m.is_file() and not is_hidden(m.name):
                    shortest.setdefault(os.path.realpath(m), m)
            matches = sorted(shortest.values())
            if not matches:
                raise GlaclipError(f"no files match {text!r}")
            base = Path(text.split("*")[0].split("?")[0].split("[")[0] or ".")
            base = base if base.is_dir() else base.parent
            found += [(m, base) for m in matches]
        else:
            from ..io.images import not_found

            raise not_found(text)
    if not found:
        raise GlaclipError("no input images")
    roots = [os.path.abspath(r) for _, r in found]
    base = Path(os.path.commonpath(roots)) if len(set(roots)) > 1 else Path(roots[0])
    names = _OutputNames()
    items, real_seen = [], set()
    for path, _ in found:
        real = os.path.realpath(path)
        if real in real_seen:  # the same file named twice (or reached again through a link)
            continue
        real_seen.add(real)
        rel = PurePosixPath(Path(os.path.relpath(os.path.abspath(path), base)).as_posix())
        items.append(Item(path, names.take(rel), rel.as_posix()))
    return items


def output_suffixes() -> tuple[str, ...]:
    """What `export.output_paths` appends to an image's output name, for every kind of file."""
    from ..io.export import output_paths

    return tuple(p.name[1:] for p in output_paths(Path("."), "n", True, True, True, True).values())


class _OutputNames:
    """Output names unique by construction. A name claims every file any kind of output could give it
    (`output_suffixes`) and its folders; a candidate is taken only when none of its files is a file or
    folder already claimed (compared case-insensitively, for case-insensitive file systems), nor one
    of the run's own files. Candidates: the name without its suffix (`a/x`), then with the suffix
    (`a/x_png`), then numbered (`a/x_png_2`, ...). An input folder whose name an output file already
    holds moves, with everything in it, to the first free `FOLDER_2`, `FOLDER_3`, ..."""

    def __init__(self):
        self.suffixes = output_suffixes()
        self.files = {f.casefold() for f in RUN_FILES}
        self.dirs: set[str] = set()
        self.moved: dict[str, str] = {}

    def _claimed(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    def _folder(self, parts: tuple[str, ...]) -> str:
        out = ""
        for part in parts:
            cand = f"{out}/{part}" if out else part
            key = cand.casefold()
            if key in self.moved:
                cand = self.moved[key]
            elif key in self.files:
                n = 2
                while self._claimed(f"{cand}_{n}".casefold()):
                    n += 1
                self.moved[key] = cand = f"{cand}_{n}"
            self.dirs.add(cand.casefold())
            out = cand
        return out

    def take(self, rel: PurePosixPath) -> str:
        folder = self._folder(rel.parts[:-1])
        if rel.name.endswith(ENCODING_SUFFIX):
            stem, ext = rel.name[: -len(ENCODING_SUFFIX)], "encoding"
        else:
            stem, ext = rel.stem, rel.suffix[1:]
        prefix = f"{folder}/" if folder else ""
        n = 1
        while True:
            name = prefix + stem + ("" if n == 1 else f"_{ext}" if n == 2 else f"_{ext}_{n - 1}")
            claims = {(name + s).casefold() for s in self.suffixes}
            if not any(self._claimed(c) for c in claims):
                self.files |= claims
                return name
            n += 1


def input_root(items: list[Item]) -> Path:
    """The folder every item's `name` is relative to."""
    it = items[0]
    return Path(os.path.abspath(it.path)).parents[len(PurePosixPath(it.name).parts) - 1]


def input_identity(items: list[Item]) -> dict:
    """What names an input set: its root, its size and a digest of every image's name and output name."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.name}\t{it.rel}\n".encode())
    return {"root": os.path.realpath(input_root(items)), "images": len(items), "sha256": h.hexdigest()}


# ------------------------------------------------------------------ sharding under torch.distributed


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1


def shard_from_env() -> Shard:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def leave(shard: Shard) -> None:
    """Leave the process group (before the process exits)."""
    if shard.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce(arr: np.ndarray, shard: Shard) -> np.ndarray:
    """Sum an integer array over all ranks."""
    if not shard.distributed:
        return arr
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.from_numpy(arr).to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


# ----------------------------------------------------------------------- manifests and progress logs


def read_manifest(path: Path) -> dict | None:
    """A run manifest as written; None when there is none, {} when it cannot be read."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def refuse_other_settings(old: dict, identity: dict, folder: Path, what: str, restart: str) -> None:
    """Raise when the manifest `old` records other settings than `identity` (JSON-like)."""
    identity = json.loads(json.dumps(identity))
    changed = sorted(k for k in set(identity) | set(old) if old.get(k) != identity.get(k))
    if changed:
        raise GlaclipError(f"{folder} holds a {what} with other settings ({', '.join(changed)} differ); "
                           f"use another --out, or start over with {restart}")


def same_on_all_ranks(text: str, shard: Shard) -> bool:
    """Whether every rank passed the same text (compared by digest)."""
    if not shard.distributed:
        return True
    import torch.distributed as dist

    d = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([d, -d], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


# the frozen networks a segmenter runs, as its identity names them
TOWERS = ("clip", "vfm", "sam", "radio", "aux_clip", "bank_clip")


def check_random_weights(models: dict, shard: Shard, resuming_work: bool, out: Path, restart_flag: str) -> None:
    """Random weights differ in every process: such a run can be neither sharded nor resumed.

    models: a run identity whose tower entries ("clip", "vfm", "sam") name the weights ("random" when
    random), as `runner.model_identity` or `Segmenter.models()`; resuming_work: a resume would continue
    finished items in `out`."""
    randomised = any((models.get(tower) or {}).get("weights") == "random" for tower in TOWERS)
    if randomised and shard.distributed:
        raise GlaclipError("random weights differ in every process, so the shards would run different models; "
                           "save the weights to files (or run one process)")
    if randomised and resuming_work:
        raise GlaclipError(f"{out} holds a run with random weights, which differ in every process: resuming would mix "
                           f"two models in one result; use {restart_flag} (or weights files)")


def iter_logs(folder: Path) -> Iterator[dict]:
    """Every record of every rank's progress log (`rank*.jsonl`); a torn last line (from a killed
    process) is skipped."""
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_logs(folder: Path, key: str = "name", order: str | None = None) -> dict[str, dict]:
    """One record per key from every rank's progress log: the first, or with `order` the one with the
    highest value of that field (missing counts as 0; the first of equals)."""
    done: dict[str, dict] = {}
    for rec in iter_logs(folder):
        prev = done.get(rec[key])
        if prev is None or (order is not None and rec.get(order, 0) > prev.get(order, 0)):
            done[rec[key]] = rec
    return done


class ProgressLog:
    """Append-only, fsynced JSON-lines log of finished items for one rank."""

    def __init__(self, folder: Path, rank: int):
        folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(folder / f"rank{rank}.jsonl", "a")

    def add(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shard_or_launch(processes: int, out: Path) -> Shard | None:
    """`--processes N` of a command writing into `out`: outside torchrun, run this very command in N ranks
    (`launch_ranks`, after checking that no run holds `out`, rather than in process 0 after the others
    started) and return None; else this process's shard (`shard_from_env`)."""
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        from .runlock import hold

        with hold(out):
            pass
        launch_ranks(processes)
        return None
    return shard_from_env()


def launch_ranks(processes: int) -> None:
    """Run this very command in `processes` ranks through torch.distributed's launcher (what torchrun
    does) and exit as they did: their own lines, no launcher report, the first failed rank's code."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # its banner and per-rank failure logs
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(processes), "-m", "glaclip", *sys.argv[1:]]))
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in sorted(exc.failures.items())}
        ended = [c for c in codes.values() if c > 0]
        for rank, code in codes.items():  # a rank stopped by a signal said nothing itself
            if code < 0 and not (ended and code == -15):  # SIGTERM: the launcher stopping the others
                print(f"glaclip: error: process {rank} was stopped by signal {-code}", file=sys.stderr)
        sys.exit(ended[0] if ended else 1)
