"""On-disk cache of text-query embeddings, shared by runs and processes.

Layout: CACHE_DIR/text/<model key>/<sha256 of the query>.safetensors, one unit vector per file with
the query in its metadata. The model key is a hash of the loaded text weights' CONTENT (a file
replaced at the same path never serves old vectors), the architecture name, the prompt templates
and the precision. Files are written under a temporary name and renamed, so concurrent processes
(eval shards) never see a partial file; an unreadable or inconsistent file costs a recomputation
and one warning, never a crash or a wrong vector.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..io.files import atomic_paths
from ..models import identity

CACHE_ENV = "GLACLIP_CACHE_DIR"


FORMAT = 1


def cache_root() -> Path:
    """$GLACLIP_CACHE_DIR, else the platform's user cache directory + /glaclip."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "glaclip" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "glaclip"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glaclip"


class EmbeddingCache:
    """Query -> E-vector store for one text model (see the module docstring)."""

    def __init__(self, root: Path, describe: Callable[[], dict]):
        self.root = Path(root)
        self._describe = describe  # computed on first use: hashing the weights takes a moment
        self._dir: Path | None = None

    @property
    def folder(self) -> Path:
        if self._dir is None:
            info = {"format": FORMAT, **self._describe()}
            key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:32]
            self._dir = self.root / "text" / key
            self._info = info
        return self._dir

    @staticmethod
    def _name(query: str) -> str:
        return hashlib.sha256(query.encode("utf-8")).hexdigest()[:40] + ".safetensors"

    def get_many(self, queries: list[str]) -> dict[str, torch.Tensor]:
        """The cached vectors among `queries` (missing or unreadable ones are left out)."""
        from safetensors import safe_open

        found = {}
        folder = self.folder
        if not folder.is_dir():
            return found
        for q in queries:
            path = folder / self._name(q)
            if not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    vec = f.get_tensor("embedding")
                if meta.get("query") != q or vec.ndim != 1 or not torch.isfinite(vec).all() or \
                        abs(float(vec.norm()) - 1.0) > 1e-3:
                    raise ValueError("content does not match its query")
            except Exception as exc:  # truncated, garbled or foreign file: recompute, never trust it
                warnings.warn(f"text cache file {path} is unreadable ({type(exc).__name__}); recomputing "
                              f"{q!r}", RuntimeWarning, stacklevel=2)
                continue
            found[q] = vec.to(torch.float32)
        return found

    def put_many(self, vectors: dict[str, torch.Tensor]) -> None:
        """Store vectors atomically; a cache that cannot be written is skipped with one warning."""
        from safetensors.torch import save_file

        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            info = folder / "model.json"
            if not info.exists():
                with atomic_paths([info]) as (tmp,):
                    tmp.write_text(json.dumps(self._info, indent=2))
            for q, vec in vectors.items():
                tensor = vec.detach().to("cpu", torch.float32).contiguous()
                with atomic_paths([folder / self._name(q)]) as (tmp,):
                    save_file({"embedding": tensor}, str(tmp), metadata={"query": q})
        except OSError as exc:
            warnings.warn(f"cannot write the text cache in {folder} ({exc.strerror or exc}); "
                          "embeddings are not kept for the next run", RuntimeWarning, stacklevel=2)


def clip_text_cache(clip, prompt_strings: Callable[[], list[str]], root: Path | None = None) -> EmbeddingCache:
    """The cache of a loaded CLIP tower (`models.ClipTower`), keyed by its text weights' content, its
    architecture, precision and the rendered prompt templates."""
    return EmbeddingCache(root or cache_root(), lambda: {
        "model": clip.name, "dtype": str(clip.dtype), "templates": prompt_strings(),
        "text_weights": identity.model_fingerprints(clip.model, {
            "text weights": lambda: identity.weights_fingerprint(clip.text_tensors())})["text weights"]})


_MODEL_DIR = re.compile(r"[0-9a-f]{32}")  # EmbeddingCache.folder


_ENTRY = re.compile(r"([0-9a-f]{40})\.safetensors")  # EmbeddingCache._name


_PARTIAL = re.compile(r"\.(?:[0-9a-f]{40}\.safetensors|model\.json)\..+\.part\.(?:safetensors|json)")  # atomic_paths


def _is_entry(path: Path) -> bool:
    """A query vector as `put_many` writes it: its name is the hash of the query in its metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            query, keys = (f.metadata() or {}).get("query"), list(f.keys())
        return keys == ["embedding"] and query is not None and EmbeddingCache._name(query) == path.name
    except Exception:
        return False


def _is_model_info(path: Path) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(info, dict) and {"format", "model", "text_weights"} <= set(info)
    except (OSError, ValueError):
        return False


@dataclass
class CacheScan:
    """What CACHE_DIR/text holds: the cache's own query vectors, its other files (model descriptions,
    leftovers of interrupted writes), its model folders, and everything else (never touched)."""

    entries: list[Path] = field(default_factory=list)
    own: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)


def scan_cache(root: Path | None = None) -> CacheScan:
    """Sort the files under CACHE_DIR/text by naming and format (symbolic links are never the cache's)."""
    text = Path(root or cache_root()) / "text"
    scan = CacheScan()
    if not text.is_dir():
        return scan
    for folder in sorted(text.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or not _MODEL_DIR.fullmatch(folder.name):
            scan.foreign.append(folder)
            continue
        scan.folders.append(folder)
        for f in sorted(folder.iterdir()):
            if f.is_symlink() or not f.is_file():
                scan.foreign.append(f)
            elif _ENTRY.fullmatch(f.name) and _is_entry(f):
                scan.entries.append(f)
            elif (f.name == "model.json" and _is_model_info(f)) or _PARTIAL.fullmatch(f.name):
                scan.own.append(f)
            else:
                scan.foreign.append(f)
    return scan


def cache_info(root: Path | None = None) -> dict:
    """Location, number of cached query vectors, models and bytes on disk (the cache's own files only)."""
    root = Path(root or cache_root())
    scan = scan_cache(root)
    size = sum(f.stat().st_size for f in scan.entries + scan.own)
    return {"location": str(root), "entries": len(scan.entries), "models": len(scan.folders), "bytes": size,
            "other_files": len(scan.foreign)}


@dataclass
class ClearReport:
    """`clear_cache`'s outcome: query vectors removed, files that could not be removed (path, reason),
    and paths kept because the cache did not write them."""

    removed: int
    failed: list[tuple[Path, str]]
    kept: list[Path]


def _rmdir(folder: Path, failed: list[tuple[Path, str]]) -> bool:
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a file appeared meanwhile: it stays
            return False
        failed.append((folder, exc.strerror or type(exc).__name__))
        return False
    return True


def clear_cache(root: Path | None = None) -> ClearReport:
    """Remove the cache's own files (query vectors, model descriptions, leftovers of interrupted writes)
    and the folders they leave empty; anything else under CACHE_DIR/text stays."""
    root = Path(root or cache_root())
    scan = scan_cache(root)
    failed: list[tuple[Path, str]] = []
    for f in scan.entries + scan.own:
        try:
            f.unlink()
        except FileNotFoundError:  # another process removed it first
            pass
        except OSError as exc:
            failed.append((f, exc.strerror or type(exc).__name__))
    entries = set(scan.entries)
    removed = len(entries) - sum(f in entries for f, _ in failed)
    # the folders the cache made, once emptied; text/ itself only when it held nothing but those
    left = {p.parent for p in scan.foreign} | {p.parent for p, _ in failed}
    gone = [d for d in scan.folders if d not in left and _rmdir(d, failed)]
    text = root / "text"
    if scan.folders and len(gone) == len(scan.folders) and text not in left:
        _rmdir(text, failed)
    return ClearReport(removed, failed, scan.foreign)
