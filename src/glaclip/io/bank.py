"""Memory banks in CorrCLIPv2's on-disk layout (CORRCLIP2.md sections 3 and 7), read as published.

    BANK_DIR/clip_embeddings/{name}_{encoder}.pt     torch-saved N x D float16 tensor; row = region id
    BANK_DIR/vfm_embeddings/{name}_{vfm}.faiss       FAISS index (IndexIDMap2, usually over IVFPQ) of the
                                                     regions' mean VFM features, ids = store rows

encoder: `metaclip_b` / `metaclip_l` for the main CLIP, `dfnclip_b` for the auxiliary one (DMCE);
vfm: `radiov3` (C-RADIOv3-L). The stores are memory-mapped (`torch.load(mmap=True)`): only the rows a
search returns are read, never the whole file. FAISS comes from the `faiss-cpu` package (the `bank`
extra); it lives here, with the files it reads (it is no network library). An IVF index probes
min(256, nlist) lists, as the release sets it.

`MemoryBank.open` checks everything before any image: each store is 2-D float16 with the CLIP's output
width, its rows cover every id of the index, the index's width is the VFM's. A missing or mismatching
file is one GlaclipError line naming the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import GlaclipError, one_line, require

NPROBE = 256  # lists an IVF index probes at most (the release: min(256, nlist))
_SAMPLED_ROWS = 1024  # store rows hashed into a bank's fingerprint (with shape, dtype and file size)


@dataclass(frozen=True)
class BankFiles:
    """Where a bank's files are: the stores by role ('main', 'aux') and the FAISS index."""

    root: Path
    name: str
    stores: Mapping[str, Path]
    index: Path


def bank_files(root: str | Path, name: str, encoders: Mapping[str, str], vfm_key: str) -> BankFiles:
    """The files of bank `name` under `root` for the given store encoders ({role: encoder key}) and VFM
    key, each checked to exist (one line naming the first missing file)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GlaclipError(f"memory bank folder not found: {root} (the folder holding clip_embeddings/ and "
                           "vfm_embeddings/)")
    stores = {role: root / "clip_embeddings" / f"{name}_{enc}.pt" for role, enc in encoders.items()}
    index = root / "vfm_embeddings" / f"{name}_{vfm_key}.faiss"
    for path in [*stores.values(), index]:
        if not path.is_file():
            raise GlaclipError(f"memory bank file not found: {path}")
    return BankFiles(root, name, dict(stores), index)


def _faiss():
    return require("faiss", "bank", "a memory bank")


def read_store(path: Path) -> torch.Tensor:
    """A store memory-mapped: N x D float16, nothing read until rows are indexed."""
    try:
        t = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise GlaclipError(f"memory bank store {path} does not load as a torch-saved tensor: {one_line(exc)}") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype != torch.float16:
        what = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise GlaclipError(f"memory bank store {path} must hold a 2-D float16 tensor (N x D), not {what}")
    return t


def read_index(path: Path):
    """(the index as read, which owns the others; inner index; id map) of a FAISS file: an IndexIDMap or
    IndexIDMap2's inner index and its ids, or a plain index whose ids are its positions; an IVF index
    probes min(NPROBE, nlist) lists."""
    faiss = _faiss()
    try:
        owner = faiss.read_index(str(path))
    except Exception as exc:
        raise GlaclipError(f"memory bank index {path} does not load with FAISS: {one_line(exc)}") from None
    index = faiss.downcast_index(owner)  # a view: `owner` holds the C++ object (and the inner index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
    else:
        inner, id_map = index, np.arange(index.ntotal, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.nprobe = min(NPROBE, ivf.nlist)
    return owner, inner, id_map


@dataclass
class MemoryBank:
    """An opened bank: memory-mapped stores by role, the FAISS index and its id map."""

    files: BankFiles
    stores: dict[str, torch.Tensor]
    index: object
    id_map: np.ndarray
    owner: object = field(default=None, repr=False)  # the FAISS object that owns `index`
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def open(cls, files: BankFiles, dims: Mapping[str, int], vfm_dim: int) -> "MemoryBank":
        """Read and check a bank: dims = the output width of each role's CLIP, vfm_dim = the VFM's width."""
        stores = {role: read_store(path) for role, path in files.stores.items()}
        owner, index, id_map = read_index(files.index)
        if index.d != vfm_dim:
            raise GlaclipError(f"memory bank index {files.index} has width {index.d}, the VFM's features {vfm_dim}")
        if id_map.size != index.ntotal:
            raise GlaclipError(f"memory bank index {files.index}: {id_map.size} ids for {index.ntotal} vectors")
        low, high = (int(id_map.min()), int(id_map.max())) if id_map.size else (0, -1)
        for role, t in stores.items():
            path = files.stores[role]
            if role in dims and t.shape[1] != dims[role]:
                raise GlaclipError(f"memory bank store {path} has width {t.shape[1]}, the {role} CLIP's output "
                                   f"{dims[role]}")
            if low < 0 or high >= t.shape[0]:
                raise GlaclipError(f"memory bank store {path} has {t.shape[0]} rows; the index {files.index.name} "
                                   f"holds ids {low}..{high}")
        return cls(files, stores, index, id_map, owner)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """R x C float32 queries -> R x k bank ids (-1 where the index returns no neighbour), nearest first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, pos = self.index.search(q, k)
        return np.where(pos >= 0, self.id_map[np.clip(pos, 0, None)], -1)

    def rows(self, role: str, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The rows `ids` of a store (k x D float16), read from the mapped file."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        return self.stores[role].index_select(0, ids)

    def fingerprint(self) -> str:
        """The bank by content, cheaply: the index file's bytes, and per store its shape, dtype, file
        size and _SAMPLED_ROWS rows evenly spaced over it (first and last included); computed once."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=20)
            with open(self.files.index, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
            for role in sorted(self.stores):
                t = self.stores[role]
                n = t.shape[0]
                h.update(f"{role}:{tuple(t.shape)}:{t.dtype}:{self.files.stores[role].stat().st_size};".encode())
                if n:
                    picks = torch.as_tensor(np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_ROWS)).astype(np.int64)))
                    h.update(t.index_select(0, picks).contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def open_bank(root: str | Path, name: str, encoders: Mapping[str, str], vfm_key: str, dims: Mapping[str, int],
              vfm_dim: int) -> MemoryBank:
    """`bank_files` then `MemoryBank.open`."""
    return MemoryBank.open(bank_files(root, name, encoders, vfm_key), dims, vfm_dim)
