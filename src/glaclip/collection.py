"""Many inputs -> per-item outputs: finding images, sharding under torch.distributed, resumable
progress logs and run manifests. `glaclip segment` (via `segment_collection`) and `glaclip eval`
both build on these pieces; nothing here knows about models.

Inputs are files, folders (recursive, following symlinked folders once, skipping hidden files and
macOS `._*` companions), glob patterns and `@list.txt` files (one path per line). Each image gets a
relative path that mirrors where it was found, so outputs never collide.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import GlaclipError

ENCODING_SUFFIX = ".encoding.safetensors"  # encoding.SUFFIX: a saved image encoding counts as an image
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jp2")


@dataclass(frozen=True)
class Item:
    path: Path  # the image file
    rel: str  # where its outputs go under --out, without suffix ("sub/dir/name")


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
            raise GlaclipError(f"image not found: {p}")
    if not found:
        raise GlaclipError("no input images")
    roots = [os.path.abspath(r) for _, r in found]
    base = Path(os.path.commonpath(roots)) if len(set(roots)) > 1 else Path(roots[0])
    items, seen, real_seen = [], set(), set()
    for path, _ in found:
        real = os.path.realpath(path)
        if real in real_seen:  # the same file named twice (or reached again through a link)
            continue
        real_seen.add(real)
        rel = Path(os.path.relpath(os.path.abspath(path), base))
        key = rel.as_posix()[: -len(ENCODING_SUFFIX)] if rel.name.endswith(ENCODING_SUFFIX) else \
            rel.with_suffix("").as_posix()
        if key in seen:
            key = rel.as_posix().replace(".", "_")  # a.jpg and a.png side by side
        seen.add(key)
        items.append(Item(path, key))
    return items


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


def write_atomic(path: Path, text: str) -> None:
    """Write text under a temporary name and rename it into place (permissions from the umask)."""
    from .visualize import atomic_paths

    with atomic_paths([path]) as (tmp,):
        tmp.write_text(text)


def check_manifest(path: Path, identity: dict, resume: bool, shard: Shard, what: str = "run") -> None:
    """Refuse to continue a run made with other settings; (re)write the manifest on rank 0.

    identity must be JSON-like; it is compared as it reads back from JSON."""
    identity = json.loads(json.dumps(identity))
    if path.exists() and resume:  # every rank checks, so every rank stops alike
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old != identity:
            changed = sorted(k for k in set(identity) | set(old) if old.get(k) != identity.get(k))
            raise GlaclipError(f"{path.parent} holds a {what} with other settings ({', '.join(changed)} differ); "
                               "use another --out, or start over (--overwrite / --no-resume)")
    barrier(shard)
    if shard.rank == 0:
        write_atomic(path, json.dumps(identity, indent=2))
    barrier(shard)


def check_random_weights(models: dict, shard: Shard, resuming_work: bool, out: Path, restart_flag: str) -> None:
    """Random weights differ in every process: such a run can be neither sharded nor resumed.

    models: `Segmenter.models()`; resuming_work: a resume would continue finished items in `out`."""
    randomised = "random" in (models["clip"]["weights"], (models.get("vfm") or {}).get("weights"))
    if randomised and shard.distributed:
        raise GlaclipError("random weights differ in every process, so the shards would run different models; "
                           "save the weights to files (or run one process)")
    if randomised and resuming_work:
        raise GlaclipError(f"{out} holds a run with random weights, which differ in every process: resuming would mix "
                           f"two models in one result; use {restart_flag} (or weights files)")


def read_logs(folder: Path, key: str = "name") -> dict[str, dict]:
    """Records of every rank's progress log (`rank*.jsonl`), first record per key; a torn last line
    (from a killed process) is ignored."""
    done: dict[str, dict] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.setdefault(rec[key], rec)
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
